"""Self-test of the harness pieces that need no peer and no moongate: the
text-format parser, protobuf encode/decode, the pure-Python snappy decoder
(against python3-snappy when importable), stale-NaN bits and logfmt. A
broken harness would make the end-to-end tests pass or fail for the wrong
reason, so it is checked on its own.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import mgtest  # noqa: E402

if __name__ == "__main__":
    mgtest.self_test()
