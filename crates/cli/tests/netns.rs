//! Two "hosts" in Linux network namespaces joined by a veth pair limited to 1 Gbit/s with
//! `tc tbf`: worker 0 and the front in one, worker 1 in the other, so every replica copy
//! between the partners crosses the limited link. Root only (as in CI); skipped with a message
//! otherwise, or without the real model.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

mod common;
use common::{model, Proc};

/// Namespaces made by this test, deleted (with their veth) when dropped.
struct Hosts {
    names: Vec<String>,
}

impl Drop for Hosts {
    fn drop(&mut self) {
        for n in &self.names {
            let _ = Command::new("ip").args(["netns", "del", n]).status();
        }
    }
}

fn sh(args: &[&str]) -> bool {
    Command::new(args[0])
        .args(&args[1..])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

/// Two namespaces joined by a veth pair shaped to 1 Gbit/s each way; `tag` keeps the names of
/// tests running at once apart.
fn hosts(tag: char) -> Option<Hosts> {
    if !is_root() || !sh(&["ip", "-V"]) || !sh(&["tc", "-V"]) {
        eprintln!("skipped: the two-host test needs root, `ip` and `tc` (CI runs it as root)");
        return None;
    }
    let id = std::process::id() % 100_000;
    let names = [format!("acl{id}{tag}a"), format!("acl{id}{tag}b")];
    let veth = [format!("av{id}{tag}a"), format!("av{id}{tag}b")];
    let hosts = Hosts {
        names: names.to_vec(),
    };
    let steps: Vec<Vec<String>> = vec![
        vec!["ip", "netns", "add", &names[0]],
        vec!["ip", "netns", "add", &names[1]],
        vec![
            "ip", "link", "add", &veth[0], "type", "veth", "peer", "name", &veth[1],
        ],
        vec!["ip", "link", "set", &veth[0], "netns", &names[0]],
        vec!["ip", "link", "set", &veth[1], "netns", &names[1]],
        vec![
            "ip",
            "-n",
            &names[0],
            "addr",
            "add",
            "10.200.0.1/24",
            "dev",
            &veth[0],
        ],
        vec![
            "ip",
            "-n",
            &names[1],
            "addr",
            "add",
            "10.200.0.2/24",
            "dev",
            &veth[1],
        ],
        vec!["ip", "-n", &names[0], "link", "set", &veth[0], "up"],
        vec!["ip", "-n", &names[1], "link", "set", &veth[1], "up"],
        vec!["ip", "-n", &names[0], "link", "set", "lo", "up"],
        vec!["ip", "-n", &names[1], "link", "set", "lo", "up"],
        vec![
            "tc", "-n", &names[0], "qdisc", "add", "dev", &veth[0], "root", "tbf", "rate", "1gbit",
            "burst", "64kb", "latency", "10ms",
        ],
        vec![
            "tc", "-n", &names[1], "qdisc", "add", "dev", &veth[1], "root", "tbf", "rate", "1gbit",
            "burst", "64kb", "latency", "10ms",
        ],
    ]
    .into_iter()
    .map(|v| v.into_iter().map(String::from).collect())
    .collect();
    run_steps(&steps);
    Some(hosts)
}

fn run_steps(steps: &[Vec<String>]) {
    for s in steps {
        let args: Vec<&str> = s.iter().map(String::as_str).collect();
        assert!(
            sh(&args),
            "setting up the namespaces failed at `{}`",
            args.join(" ")
        );
    }
}

/// Three namespaces: two worker hosts (`10.201.0.2`, `10.202.0.2`) each joined by a veth pair
/// to a router host (`10.201.0.1`, `10.202.0.1`) that forwards between them. The front runs on
/// the router; switching its forwarding off cuts the workers off from each other while the
/// front still reaches both.
fn three_hosts(tag: char) -> Option<Hosts> {
    if !is_root() || !sh(&["ip", "-V"]) || !sh(&["sysctl", "-V"]) {
        eprintln!(
            "skipped: the three-host test needs root, `ip` and `sysctl` (CI runs it as root)"
        );
        return None;
    }
    let id = std::process::id() % 100_000;
    let names = [
        format!("acl{id}{tag}a"),
        format!("acl{id}{tag}b"),
        format!("acl{id}{tag}r"),
    ];
    let hosts = Hosts {
        names: names.to_vec(),
    };
    let mut steps: Vec<Vec<String>> = Vec::new();
    let mut step = |v: &[&str]| steps.push(v.iter().map(|s| s.to_string()).collect());
    for n in &names {
        step(&["ip", "netns", "add", n]);
        step(&["ip", "-n", n, "link", "set", "lo", "up"]);
    }
    for (k, host) in names[..2].iter().enumerate() {
        let (near, far) = (format!("av{id}{tag}{k}h"), format!("av{id}{tag}{k}r"));
        let net = 201 + k;
        step(&[
            "ip", "link", "add", &near, "type", "veth", "peer", "name", &far,
        ]);
        step(&["ip", "link", "set", &near, "netns", host]);
        step(&["ip", "link", "set", &far, "netns", &names[2]]);
        step(&[
            "ip",
            "-n",
            host,
            "addr",
            "add",
            &format!("10.{net}.0.2/24"),
            "dev",
            &near,
        ]);
        step(&[
            "ip",
            "-n",
            &names[2],
            "addr",
            "add",
            &format!("10.{net}.0.1/24"),
            "dev",
            &far,
        ]);
        step(&["ip", "-n", host, "link", "set", &near, "up"]);
        step(&["ip", "-n", &names[2], "link", "set", &far, "up"]);
        step(&[
            "ip",
            "-n",
            host,
            "route",
            "add",
            "default",
            "via",
            &format!("10.{net}.0.1"),
        ]);
    }
    step(&[
        "ip",
        "netns",
        "exec",
        &names[2],
        "sysctl",
        "-qw",
        "net.ipv4.ip_forward=1",
    ]);
    run_steps(&steps);
    Some(hosts)
}

/// Runs `accellm ARGS` inside namespace `ns`; waits for its "listening on" line.
fn start_in(ns: &str, args: &[&str]) -> (Proc, String) {
    let mut child = Command::new("ip")
        .args(["netns", "exec", ns, env!("CARGO_BIN_EXE_accellm")])
        .args(args)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("ip netns exec runs");
    let stderr = child.stderr.take().expect("stderr piped");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if let Some(addr) = line.split("listening on ").nth(1) {
                let addr = addr.trim_start_matches("http://");
                let _ = tx.send(addr.split_whitespace().next().unwrap_or("").to_string());
            }
        }
    });
    let p = Proc(child);
    let addr = rx
        .recv_timeout(Duration::from_secs(120))
        .unwrap_or_else(|_| panic!("accellm {args:?} did not start in {ns}"));
    (p, addr)
}

/// Starts worker 0 and 1 in the first two namespaces on `addrs`, and a front driving them in
/// namespace `front_ns` on `port`, all with `kv_blocks` blocks; returns the processes and the
/// front's address.
fn start_pair(
    h: &Hosts,
    model: &str,
    addrs: [&str; 2],
    front_ns: usize,
    port: &str,
    kv_blocks: &str,
) -> (Vec<Proc>, String) {
    let mut procs = Vec::new();
    for (ns, addr) in h.names.iter().zip(addrs) {
        let args = [
            "worker",
            "--listen",
            addr,
            "--model",
            model,
            "--kv-blocks",
            kv_blocks,
            // The namespaces' private addresses are not loopback; this test measures the link,
            // not TLS (tests/tls.rs covers that).
            "--insecure",
        ];
        procs.push(start_in(ns, &args).0);
    }
    let workers = addrs.join(",");
    let (front, addr) = start_in(
        &h.names[front_ns],
        &[
            "serve",
            "--port",
            port,
            "--model",
            model,
            "--kv-blocks",
            kv_blocks,
            "--workers",
            &workers,
        ],
    );
    procs.push(front);
    (procs, addr)
}

/// The front's `/metrics`, fetched from inside namespace `ns`.
fn metrics_in(ns: &str, front: &str) -> String {
    let out = Command::new("ip")
        .args(["netns", "exec", ns, "python3", "-c"])
        .arg(format!(
            "import urllib.request; print(urllib.request.urlopen('http://{front}/metrics').read().decode())"
        ))
        .output()
        .expect("python3 runs");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn a_pair_split_over_two_namespaces_serves_through_a_1_gbit_link() {
    let Some(model) = model() else { return };
    let Some(h) = hosts('s') else { return };
    let model = model.to_str().expect("UTF-8 path");
    let (_procs, front) = start_pair(
        &h,
        model,
        ["10.200.0.1:7001", "10.200.0.2:7001"],
        0,
        "18000",
        "128",
    );
    // The client runs on "host 1" too: `accellm bench` inside the namespace.
    let out = std::env::temp_dir().join(format!("accellm-netns-{}.json", std::process::id()));
    let status = Command::new("ip")
        .args([
            "netns",
            "exec",
            &h.names[0],
            env!("CARGO_BIN_EXE_accellm"),
            "bench",
        ])
        .args([
            "--base-url",
            &format!("http://{front}"),
            "--num-prompts",
            "6",
        ])
        .args([
            "--workload",
            "synthetic:prompt=200,output=8",
            "--no-progress",
            "--seed",
            "1",
        ])
        .args(["--json", out.to_str().expect("UTF-8 path")])
        .stdout(Stdio::null())
        .status()
        .expect("bench runs");
    assert!(status.success());
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&out).expect("bench JSON")).unwrap();
    let _ = std::fs::remove_file(&out);
    assert_eq!(v["completed"], 6, "{v}");
    // The replicas crossed the link (the front only hears the bytes the workers sent).
    let text = metrics_in(&h.names[0], &front);
    let copied: f64 = text
        .lines()
        .find_map(|l| l.strip_prefix("accellm_kv_copied_bytes_total{kind=\"replica\"} "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no replica bytes in the metrics: {text}"));
    assert!(copied > 0.0);
}

/// Runs `accellm bench` inside namespace `ns` against `front`; returns its JSON summary.
fn bench_in(ns: &str, front: &str, prompts: &str, workload: &str) -> serde_json::Value {
    bench_seeded(ns, front, prompts, workload, "1")
}

/// [`bench_in`] with the workload drawn with `seed`.
fn bench_seeded(
    ns: &str,
    front: &str,
    prompts: &str,
    workload: &str,
    seed: &str,
) -> serde_json::Value {
    let out = std::env::temp_dir().join(format!(
        "accellm-netns-{}-{prompts}.json",
        std::process::id()
    ));
    let status = Command::new("ip")
        .args(["netns", "exec", ns, env!("CARGO_BIN_EXE_accellm"), "bench"])
        .args([
            "--base-url",
            &format!("http://{front}"),
            "--num-prompts",
            prompts,
        ])
        .args(["--workload", workload, "--arrivals", "all-at-once"])
        .args(["--no-progress", "--seed", seed, "--timeout", "300"])
        .args(["--json", out.to_str().expect("UTF-8 path")])
        .stdout(Stdio::null())
        .status()
        .expect("bench runs");
    assert!(status.success());
    let v = serde_json::from_str(&std::fs::read_to_string(&out).expect("bench JSON"))
        .expect("bench JSON parses");
    let _ = std::fs::remove_file(&out);
    v
}

#[test]
fn a_partition_cutting_off_a_partner_loses_no_request() {
    let Some(model) = model() else { return };
    let Some(h) = hosts('p') else { return };
    let model = model.to_str().expect("UTF-8 path");
    let (_procs, front) = start_pair(
        &h,
        model,
        ["10.200.0.1:7001", "10.200.0.2:7001"],
        0,
        "18001",
        "256",
    );
    // Cut host 2 off (its veth end goes down) before any request is sent, so the work that
    // must cross the cut (worker 1's iterations, worker 0's copies to it) comes after it on any
    // machine, however fast: worker 0's first copy to its partner fails (no connection within
    // 10 s), which takes the pair's link down, and the front's deadline for worker 1's
    // iteration passes, which declares it down; every request is then served by worker 0.
    let id = std::process::id() % 100_000;
    assert!(sh(&[
        "ip",
        "-n",
        &h.names[1],
        "link",
        "set",
        &format!("av{id}pb"),
        "down"
    ]));
    let v = bench_in(&h.names[0], &front, "8", "synthetic:prompt=96,output=48");
    assert_eq!(v["completed"], 8, "every request completes: {v}");
    let text = metrics_in(&h.names[0], &front);
    assert!(
        text.lines()
            .any(|l| l.trim() == "accellm_instance_up{instance=\"1\"} 0"),
        "the cut-off worker is down: {text}"
    );
}

/// The value of the series `series` (name and labels, as printed) in a `/metrics` text.
fn series(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
}

/// Iterations each worker has run, from the front's metrics.
fn iterations(text: &str) -> [f64; 2] {
    [0, 1].map(|i| {
        series(
            text,
            &format!("accellm_instance_iterations_total{{instance=\"{i}\"}}"),
        )
        .unwrap_or_else(|| panic!("no iterations of instance {i}: {text}"))
    })
}

#[test]
fn a_partition_between_the_partners_alone_leaves_both_serving_and_they_pair_again() {
    let Some(model) = model() else { return };
    let Some(h) = three_hosts('t') else { return };
    let model = model.to_str().expect("UTF-8 path");
    let (_procs, front) = start_pair(
        &h,
        model,
        ["10.201.0.2:7001", "10.202.0.2:7001"],
        2,
        "18002",
        "256",
    );
    let router = &h.names[2];
    let forwarding = |on: bool| {
        let v = format!("net.ipv4.ip_forward={}", u8::from(on));
        assert!(sh(&["ip", "netns", "exec", router, "sysctl", "-qw", &v]));
    };
    let linked = || {
        series(
            &metrics_in(router, &front),
            "accellm_pair_linked{pair=\"0-1\"}",
        )
    };
    assert_eq!(linked(), Some(1.0), "the pair starts linked");
    // The router stops forwarding before any request is sent: the partners lose each other but
    // both keep talking to the front. The first prefill's KV copy must then cross the cut, so
    // it fails (no connection within 10 s) on any machine, however fast: the link is down.
    forwarding(false);
    let v = bench_in(router, &front, "4", "synthetic:prompt=96,output=32");
    assert_eq!(v["completed"], 4, "every request completes: {v}");
    assert_eq!(v["failed"], 0, "{v}");
    let text = metrics_in(router, &front);
    assert_eq!(
        series(&text, "accellm_pair_linked{pair=\"0-1\"}"),
        Some(0.0),
        "the cut was detected: {text}"
    );
    let before = iterations(&text);
    // Still cut off: more requests, served by both partners unpaired, none lost.
    let v = bench_in(router, &front, "8", "synthetic:prompt=96,output=48");
    assert_eq!(v["completed"], 8, "every request completes: {v}");
    assert_eq!(v["failed"], 0, "{v}");
    let text = metrics_in(router, &front);
    eprintln!(
        "{}",
        text.lines()
            .filter(|l| l.starts_with("accellm_instance_up")
                || l.starts_with("accellm_instance_iterations")
                || l.starts_with("accellm_pair_linked")
                || l.starts_with("accellm_requests_recovered_total"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    assert_eq!(
        series(&text, "accellm_pair_linked{pair=\"0-1\"}"),
        Some(0.0),
        "still cut: {text}"
    );
    let after = iterations(&text);
    for i in 0..2 {
        assert!(
            after[i] > before[i],
            "worker {i} ran iterations during the partition: {before:?} -> {after:?}"
        );
        assert_eq!(
            series(&text, &format!("accellm_instance_up{{instance=\"{i}\"}}")),
            Some(1.0),
            "worker {i} stays in service"
        );
    }
    // The link returns: the pair re-forms within 5 s (the workers probe each other every
    // second; a probe under way retries its connection on TCP's schedule).
    let copied =
        |t: &str| series(t, "accellm_kv_copied_bytes_total{kind=\"replica\"}").unwrap_or(0.0);
    let copied_before = copied(&text);
    forwarding(true);
    let back = std::time::Instant::now();
    while linked() != Some(1.0) {
        assert!(
            back.elapsed() < Duration::from_secs(30),
            "the pair did not re-form within 30 s"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let took = back.elapsed();
    eprintln!(
        "pair re-formed {:.1} s after the link returned",
        took.as_secs_f64()
    );
    assert!(
        took < Duration::from_secs(5),
        "the pair re-formed {took:?} after the link returned (goal: 5 s)"
    );
    // Paired again: replicas cross the link once more (new prompts: a prompt found in the
    // prefix cache starts no replica).
    let v = bench_seeded(router, &front, "2", "synthetic:prompt=96,output=8", "2");
    assert_eq!(v["completed"], 2, "{v}");
    let text = metrics_in(router, &front);
    let shown: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("copied") || l.contains("linked") || l.contains("copy"))
        .collect();
    assert!(
        copied(&text) > copied_before,
        "replicas again after the link returned ({copied_before} bytes before): {shown:#?}"
    );
    assert_eq!(
        series(&text, "accellm_pair_linked{pair=\"0-1\"}"),
        Some(1.0)
    );
}
