//! The Kubernetes base under `deploy/` renders with `kubectl kustomize` and holds what the
//! deployment needs: workers as a StatefulSet behind a headless Service, the front as a
//! Deployment and Service, probes, Prometheus annotations and resource requests.
//!
//! `.ci/run` installs `kubectl` (Debian's `kubernetes-client`) when missing; without it this test
//! checks the raw manifests instead and says so.

use std::path::PathBuf;
use std::process::Command;

fn deploy_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../deploy")
}

/// The rendered manifests, or the raw files concatenated when kubectl is not installed.
fn manifests() -> String {
    let dir = deploy_dir();
    match Command::new("kubectl").arg("kustomize").arg(&dir).output() {
        Ok(out) => {
            assert!(
                out.status.success(),
                "kubectl kustomize deploy/ failed: {}",
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
            ["worker.yaml", "front.yaml"]
                .iter()
                .map(|f| std::fs::read_to_string(dir.join(f)).expect("manifest readable"))
                .collect::<Vec<_>>()
                .join("\n---\n")
        }
    }
}

/// The documents of a multi-document YAML stream.
fn documents(all: &str) -> Vec<&str> {
    all.split("\n---")
        .map(str::trim)
        .filter(|d| !d.is_empty())
        .collect()
}

fn find<'a>(docs: &[&'a str], kind: &str, name: &str) -> &'a str {
    docs.iter()
        .find(|d| {
            d.lines().any(|l| l.trim() == format!("kind: {kind}"))
                && d.lines().any(|l| l.trim() == format!("name: {name}"))
        })
        .copied()
        .unwrap_or_else(|| panic!("no {kind} named {name} in deploy/"))
}

#[test]
fn kustomize_base_renders_with_workers_and_front() {
    let all = manifests();
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
