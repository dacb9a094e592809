# moongate's container image: a build stage compiles it with the project's
# CMake (Release) from Debian packages; the runtime stage holds the binary,
# its Lua library and the libraries it links, and must not hold more (no
# compiler, curl or package lists). See docs/container.md.
#
#   podman build --format docker -t moongate .      (or: docker build -t moongate .)
#   podman run --rm -p 127.0.0.1:9464:9464 -v ./my.lua:/etc/moongate/moongate.lua:ro moongate
ARG BASE_IMAGE=debian:bookworm-slim

# ---- build -------------------------------------------------------------------
FROM ${BASE_IMAGE} AS build
ARG DEBIAN_FRONTEND=noninteractive
# Image builds keep warnings as warnings: an optimisation-level warning of a
# newer compiler must not make the image unbuildable. CI builds with -Werror.
ARG CMAKE_ARGS="-DMG_WERROR=OFF"
# The package list is the one `make` uses (deps/apt-packages.txt); copied
# alone first so the apt layer is cached until the list changes.
COPY deps/apt-packages.txt /tmp/apt-packages.txt
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
      $(sed 's/#.*//' /tmp/apt-packages.txt) \
 && rm -rf /var/lib/apt/lists/*
# The whole tree (minus .dockerignore): CMakeLists.txt may refer to files
# anywhere in it. Only the moongate target is built; tests are not.
WORKDIR /src
COPY . .
RUN cmake -S . -B /build -DCMAKE_BUILD_TYPE=Release -DCMAKE_INSTALL_PREFIX=/usr/local ${CMAKE_ARGS} \
 && cmake --build /build --target moongate -j"$(nproc)" \
 && DESTDIR=/out cmake --install /build --strip \
 && /out/usr/local/bin/moongate --version

# ---- runtime -----------------------------------------------------------------
FROM ${BASE_IMAGE}
ARG DEBIAN_FRONTEND=noninteractive
# The runtime halves of deps/apt-packages.txt (llhttp and xxhash are compiled
# in). libstdc++ (for snappy) is already part of the base image.
RUN apt-get update \
 && apt-get install -y --no-install-recommends \
      libuv1 libluajit-5.1-2 libssl3 libprotobuf-c1 libsnappy1v5 zlib1g libpcre2-8-0 libyaml-0-2 libc-ares2 \
 && rm -rf /var/lib/apt/lists/* /var/cache/apt/*.bin /var/log/apt /var/log/dpkg.log \
 && groupadd --gid 10001 moongate \
 && useradd --uid 10001 --gid 10001 --no-create-home --home-dir /var/lib/moongate \
      --shell /usr/sbin/nologin moongate 2>/dev/null \
 && install -d -o 10001 -g 10001 -m 0750 /var/lib/moongate \
 && install -d -m 0755 /etc/moongate /etc/ssl/certs
# Trust store for HTTPS receivers (AMP) and targets: only the CA bundle, not
# the openssl package; SSL_CERT_FILE points OpenSSL's default paths at it.
COPY --from=build /etc/ssl/certs/ca-certificates.crt /etc/ssl/certs/ca-certificates.crt
COPY --from=build /out/usr/local/ /usr/local/
COPY deploy/container/moongate-healthcheck /usr/local/bin/moongate-healthcheck
# The default script: moongate scrapes itself and prints every sample on
# standard output. Mount your own script over this path.
COPY scripts/examples/default.lua /etc/moongate/moongate.lua
ENV SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt \
    MOONGATE_HEALTH_ADDR=127.0.0.1:9464

USER 10001:10001
WORKDIR /var/lib/moongate
# Durable state (the on-disk queue, when it lands) lives here.
VOLUME ["/var/lib/moongate"]
EXPOSE 9464
# moongate drains its queues on SIGTERM (for --drain-timeout) and exits 0.
STOPSIGNAL SIGTERM
# bash's /dev/tcp, no curl: see deploy/container/moongate-healthcheck.
HEALTHCHECK --interval=30s --timeout=5s --start-period=15s --retries=3 \
  CMD ["/usr/local/bin/moongate-healthcheck"]
ENTRYPOINT ["/usr/local/bin/moongate"]
CMD ["run", "/etc/moongate/moongate.lua", "--listen", "0.0.0.0:9464", "--data-dir", "/var/lib/moongate"]
