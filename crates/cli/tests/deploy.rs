//! The Kubernetes manifests under `deploy/` render with `kubectl kustomize` and hold what the
//! deployment needs. The base (`deploy/`, files in `deploy/base/`): workers as a StatefulSet
//! behind a headless Service, the front as a Deployment and Service, probes, Prometheus
//! annotations and resource requests. The gateway overlay (`deploy/gateway/`): the base plus an
//! InferencePool over the front pods, an HTTPRoute to it and llm-d's endpoint picker with its
//! configuration (prefix, queue and KV-cache scorers) and the permissions it needs. Security:
//! mutual TLS from a mounted Secret on every link, and a NetworkPolicy that lets only fronts
//! reach the workers' control port and only workers their KV port.
//!
//! `.ci/run` installs `kubectl` (Debian's `kubernetes-client`) when missing; without it this test
//! checks the raw manifests instead and says so.

use std::path::PathBuf;
use std::process::Command;

fn deploy_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../deploy")
}

/// The rendered manifests of `deploy/<dir>`, or the raw `files` (relative to `deploy/`)
/// concatenated when kubectl is not installed.
fn manifests(dir: &str, files: &[&str]) -> String {
    let root = deploy_dir();
    match Command::new("kubectl")
        .arg("kustomize")
        .arg(root.join(dir))
        .output()
    {
        Ok(out) => {
            assert!(
                out.status.success(),
                "kubectl kustomize deploy/{dir} failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            String::from_utf8(out.stdout).expect("kubectl printed UTF-8")
        }
        Err(_) => {
            assert!(
                std::env::var_os("ACCELLM_REQUIRE_KUBECTL").is_none(),
                "ACCELLM_REQUIRE_KUBECTL is set but kubectl is not installed"
            );
            eprintln!("kubectl not installed: checking the raw manifests without rendering them");
            files
                .iter()
                .map(|f| std::fs::read_to_string(root.join(f)).expect("manifest readable"))
                .collect::<Vec<_>>()
                .join("\n---\n")
        }
    }
}

const BASE: [&str; 3] = [
    "base/worker.yaml",
    "base/front.yaml",
    "base/networkpolicy.yaml",
];

/// The documents of a multi-document YAML stream.
fn documents(all: &str) -> Vec<&str> {
    all.split("\n---")
        .map(str::trim)
        .filter(|d| !d.is_empty())
        .collect()
}

/// The document of this kind (top-level `kind:`) and name (`metadata.name`, the only `name:`
/// two spaces in, besides a RoleBinding's `roleRef`).
fn find<'a>(docs: &[&'a str], kind: &str, name: &str) -> &'a str {
    docs.iter()
        .find(|d| {
            d.lines().any(|l| l.trim_end() == format!("kind: {kind}"))
                && d.lines().any(|l| l.trim_end() == format!("  name: {name}"))
        })
        .copied()
        .unwrap_or_else(|| panic!("no {kind} named {name} in deploy/"))
}

#[test]
fn kustomize_base_renders_with_workers_and_front() {
    let all = manifests(".", &BASE);
    let docs = documents(&all);
    let workers = find(&docs, "StatefulSet", "accellm-worker");
    let headless = find(&docs, "Service", "accellm-worker");
    let front = find(&docs, "Deployment", "accellm-front");
    find(&docs, "Service", "accellm");

    assert!(
        headless.contains("clusterIP: None"),
        "worker Service must be headless"
    );
    assert!(workers.contains("serviceName: accellm-worker"));
    assert!(
        workers.contains("--listen"),
        "workers run `accellm worker --listen`"
    );
    assert!(workers.contains("tcpSocket"), "worker probes");

    // The front's --workers list names every worker pod by its stable name.
    let replicas: usize = workers
        .lines()
        .find_map(|l| l.trim().strip_prefix("replicas: "))
        .and_then(|n| n.trim().parse().ok())
        .expect("worker replicas");
    assert!(
        replicas >= 2 && replicas.is_multiple_of(2),
        "workers come in pairs"
    );
    for i in 0..replicas {
        assert!(
            front.contains(&format!("accellm-worker-{i}.accellm-worker:7001")),
            "front's --workers lacks worker {i}"
        );
    }
    assert!(!front.contains(&format!("accellm-worker-{replicas}.")));

    for (what, doc) in [("workers", workers), ("front", front)] {
        assert!(doc.contains("readinessProbe"), "{what}: readiness probe");
        assert!(doc.contains("livenessProbe"), "{what}: liveness probe");
        assert!(doc.contains("requests:"), "{what}: resource requests");
    }
    assert!(front.contains("path: /health"), "front probes /health");
    assert!(front.contains("prometheus.io/scrape: \"true\""));
    assert!(front.contains("prometheus.io/path: /metrics"));
}

/// Whether a document has this line, whatever its indentation and list dash (kustomize's output
/// and the raw files indent lists differently).
fn has(doc: &str, line: &str) -> bool {
    doc.lines()
        .map(|l| l.trim().trim_start_matches("- ").trim())
        .any(|l| l == line)
}

/// The line after `line` (an argument's value in a container's `args`).
fn after<'a>(doc: &'a str, line: &str) -> Option<&'a str> {
    let mut lines = doc
        .lines()
        .map(|l| l.trim().trim_start_matches("- ").trim());
    lines.find(|l| *l == line)?;
    lines.next().map(|v| v.trim_matches('"'))
}

#[test]
fn gateway_overlay_pools_the_fronts_behind_the_endpoint_picker() {
    let all = manifests(
        "gateway",
        &[
            BASE[0],
            BASE[1],
            BASE[2],
            "gateway/inferencepool.yaml",
            "gateway/epp.yaml",
            "gateway/httproute.yaml",
        ],
    );
    let docs = documents(&all);
    // The base comes along unchanged.
    let front = find(&docs, "Deployment", "accellm-front");
    find(&docs, "StatefulSet", "accellm-worker");

    // The pool selects the front pods (their template's label) on the front's HTTP port, and
    // names the picker's Service and gRPC port.
    let pool = find(&docs, "InferencePool", "accellm");
    assert!(has(pool, "apiVersion: inference.networking.k8s.io/v1"));
    assert!(has(pool, "app.kubernetes.io/name: accellm-front"));
    assert!(has(front, "app.kubernetes.io/name: accellm-front"));
    assert!(has(pool, "number: 8000") && has(front, "containerPort: 8000"));
    assert!(has(pool, "name: accellm-epp") && has(pool, "number: 9002"));
    let epp_service = find(&docs, "Service", "accellm-epp");
    assert!(has(epp_service, "port: 9002") && has(epp_service, "appProtocol: http2"));
    assert!(has(epp_service, "app.kubernetes.io/name: accellm-epp"));

    // The route sends every path to the pool.
    let route = find(&docs, "HTTPRoute", "accellm");
    assert!(has(route, "apiVersion: gateway.networking.k8s.io/v1"));
    assert!(has(route, "kind: InferencePool") && has(route, "name: accellm"));
    assert!(has(route, "group: inference.networking.k8s.io"));
    assert!(has(route, "type: PathPrefix") && has(route, "value: /"));

    // The picker: llm-d's image, this pool, its configuration file from the ConfigMap.
    let epp = find(&docs, "Deployment", "accellm-epp");
    assert!(
        epp.lines().any(|l| l
            .trim()
            .starts_with("image: ghcr.io/llm-d/llm-d-inference-scheduler:v")),
        "the picker runs llm-d's inference scheduler image"
    );
    assert_eq!(after(epp, "--pool-name"), Some("accellm"));
    assert_eq!(
        after(epp, "--config-file"),
        Some("/config/default-plugins.yaml")
    );
    assert!(has(epp, "mountPath: /config") && has(epp, "name: accellm-epp"));
    assert!(has(epp, "containerPort: 9002") && has(epp, "containerPort: 9003"));
    assert!(has(epp, "readinessProbe:") && has(epp, "livenessProbe:"));
    assert!(has(epp, "serviceAccountName: accellm-epp"));

    // Its configuration: the prefix, queue and KV-cache scorers, each weighted in the profile.
    let config = find(&docs, "ConfigMap", "accellm-epp");
    assert!(has(config, "default-plugins.yaml: |"));
    assert!(has(
        config,
        "apiVersion: inference.networking.x-k8s.io/v1alpha1"
    ));
    assert!(has(config, "kind: EndpointPickerConfig"));
    for plugin in [
        "prefix-cache-scorer",
        "queue-scorer",
        "kv-cache-utilization-scorer",
        "max-score-picker",
    ] {
        assert!(has(config, &format!("type: {plugin}")), "{plugin} declared");
        assert!(
            has(config, &format!("pluginRef: {plugin}")),
            "{plugin} in the profile"
        );
    }

    // It may watch its pool, the pods and the objectives, as its service account.
    let role = find(&docs, "Role", "accellm-epp");
    for resource in ["inferencepools", "pods", "inferenceobjectives"] {
        assert!(has(role, resource) || has(role, &format!("resources: [\"{resource}\"]")));
    }
    let binding = find(&docs, "RoleBinding", "accellm-epp");
    assert!(has(binding, "kind: ServiceAccount") && has(binding, "name: accellm-epp"));
    find(&docs, "ServiceAccount", "accellm-epp");
}

#[test]
fn only_fronts_reach_the_control_port_and_only_workers_the_kv_port_over_mutual_tls() {
    let all = manifests(".", &BASE);
    let docs = documents(&all);
    let workers = find(&docs, "StatefulSet", "accellm-worker");
    let front = find(&docs, "Deployment", "accellm-front");
    let headless = find(&docs, "Service", "accellm-worker");

    // Two ports: fronts on `worker` (7001), KV links on `kv` (7002), and the front knows it.
    assert!(has(workers, "--listen=0.0.0.0:7001"));
    assert!(has(workers, "--kv-listen=0.0.0.0:7002"));
    assert!(has(workers, "containerPort: 7002") && has(workers, "name: kv"));
    assert!(has(headless, "port: 7002"));
    assert!(has(front, "--worker-kv-port=7002"));
    assert!(!has(workers, "--insecure") && !has(front, "--insecure"));

    // Mutual TLS on both sides, from the accellm-tls Secret mounted read-only.
    for (what, doc) in [("workers", workers), ("front", front)] {
        for flag in [
            "--tls-cert=/etc/accellm/tls/tls.crt",
            "--tls-key=/etc/accellm/tls/tls.key",
            "--tls-ca=/etc/accellm/tls/ca.crt",
        ] {
            assert!(has(doc, flag), "{what}: {flag}");
        }
        assert!(has(doc, "mountPath: /etc/accellm/tls"), "{what}: mount");
        assert!(has(doc, "secretName: accellm-tls"), "{what}: Secret");
        assert!(has(doc, "readOnly: true"), "{what}: read-only mount");
    }

    // The policy selects the workers and admits exactly two kinds of traffic.
    let policy = find(&docs, "NetworkPolicy", "accellm-worker");
    assert!(has(policy, "apiVersion: networking.k8s.io/v1"));
    assert!(has(policy, "Ingress"));
    // A rule: the text from one `from:` to the next, with its peers' label and its ports.
    let rule = |peer: &str, port: &str| {
        policy.split("from:").skip(1).any(|r| {
            has(r, &format!("app.kubernetes.io/name: {peer}")) && has(r, &format!("port: {port}"))
        })
    };
    assert!(
        rule("accellm-front", "worker"),
        "fronts reach the control port"
    );
    assert!(rule("accellm-worker", "kv"), "workers reach the KV port");
    assert_eq!(
        policy.matches("from:").count(),
        2,
        "nothing else is admitted"
    );
    assert!(
        !rule("accellm-front", "kv") && !rule("accellm-worker", "worker"),
        "no crossing"
    );
}
