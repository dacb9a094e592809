/* mg_sd_k8s: Kubernetes service discovery (kubernetes_sd_configs), roles
 * pod, service, endpoints, endpointslice and node, with the targets and
 * __meta_kubernetes_* labels Prometheus gives them. Lists then watches the
 * API server; owns its object cache and requests, borrows the loop and the
 * HTTP client from mg_sd_env_t. */
#ifndef MG_SD_K8S_H
#define MG_SD_K8S_H

#include "mg_sd.h"

/* kind "kubernetes". Options as in Prometheus: role (required), api_server
 * (absent: in-cluster, from KUBERNETES_SERVICE_HOST/_PORT and the pod's
 * service account), namespaces {names, own_namespace}, selectors [{role,
 * label, field}], attach_metadata {node}, and towards api_server
 * bearer_token, bearer_token_file, authorization, basic_auth, tls_config.
 * kubeconfig_file, oauth2, proxies, the ingress role and
 * attach_metadata.namespace are refused by check with a message saying so.
 *
 * Files (bearer_token_file, authorization.credentials_file,
 * basic_auth.password_file, the service account token) are read at start
 * and again every minute (bound tokens rotate); their contents are never
 * logged. Relative paths are taken from the configuration file's folder.
 *
 * For tests only: MOONGATE_K8S_SERVICEACCOUNT_DIR replaces the service
 * account folder (/var/run/secrets/kubernetes.io/serviceaccount) that holds
 * token, ca.crt and namespace. */
extern const mg_sd_ops_t mg_sd_kubernetes_ops;

#endif
