//! Renders a sample report in headless Chromium: the page must load without console
//! messages, every chart must reach the DOM as an `<svg>`, and the screenshot must be a
//! real picture. Skipped (with a message) when no Chromium is installed; set
//! `ACCELLM_CHROMIUM` to point at a browser binary explicitly.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

/// Finds a Chromium binary: `$ACCELLM_CHROMIUM`, else `chromium`, `chromium-browser` or
/// `google-chrome` on `PATH`.
fn find_chromium() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("ACCELLM_CHROMIUM") {
        return Some(PathBuf::from(p));
    }
    let path = std::env::var_os("PATH")?;
    for dir in std::env::split_paths(&path) {
        for name in ["chromium", "chromium-browser", "google-chrome"] {
            let candidate = dir.join(name);
            if candidate.is_file() {
                return Some(candidate);
            }
        }
    }
    None
}

/// Runs headless Chromium on `page` with extra arguments; kills it after two minutes.
fn run_chromium(bin: &Path, profile: &Path, page: &Path, extra: &[&str]) -> Output {
    let mut cmd = Command::new(bin);
    cmd.args([
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        "--hide-scrollbars",
        "--enable-logging=stderr",
        "--v=0",
    ])
    .arg(format!("--user-data-dir={}", profile.display()))
    .args(extra)
    .arg(format!("file://{}", page.display()))
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {}: {e}", bin.display()));
    let start = Instant::now();
    loop {
        match child.try_wait() {
            Ok(Some(_)) => break,
            Ok(None) if start.elapsed() > Duration::from_secs(120) => {
                let _ = child.kill();
                panic!("chromium did not finish within 120 s");
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(100)),
            Err(e) => panic!("waiting for chromium: {e}"),
        }
    }
    child
        .wait_with_output()
        .unwrap_or_else(|e| panic!("chromium output: {e}"))
}

/// Console messages (errors, warnings, logs) Chromium printed for the page.
fn console_lines(stderr: &[u8]) -> Vec<String> {
    String::from_utf8_lossy(stderr)
        .lines()
        .filter(|l| l.contains(":CONSOLE"))
        .map(str::to_string)
        .collect()
}

/// Width and height from a PNG's IHDR chunk.
fn png_size(png: &[u8]) -> Option<(u32, u32)> {
    if png.len() < 24 || &png[..8] != b"\x89PNG\r\n\x1a\n" || &png[12..16] != b"IHDR" {
        return None;
    }
    let be = |b: &[u8]| u32::from_be_bytes([b[0], b[1], b[2], b[3]]);
    Some((be(&png[16..20]), be(&png[20..24])))
}

#[test]
fn report_renders_in_headless_chromium() {
    let Some(bin) = find_chromium() else {
        eprintln!(
            "skipped: no chromium on PATH (apt-get install chromium, or set ACCELLM_CHROMIUM)"
        );
        return;
    };
    let dir = std::env::temp_dir().join(format!("accellm-report-chromium-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{e}"));
    let page = dir.join("report.html");
    let report = common::sample_report();
    report.write(&page).unwrap_or_else(|e| panic!("{e}"));
    let charts = report
        .sections
        .iter()
        .map(|s| s.charts.len())
        .sum::<usize>();

    // The DOM as Chromium parsed it: every chart must be there as inline SVG.
    let out = run_chromium(&bin, &dir.join("profile-dom"), &page, &["--dump-dom"]);
    assert!(
        out.status.success(),
        "chromium --dump-dom failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let dom = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        dom.matches("<svg").count(),
        charts,
        "charts in the rendered DOM"
    );
    assert!(
        dom.contains("Sample &lt;report&gt;"),
        "title missing from the DOM"
    );
    let console = console_lines(&out.stderr);
    assert!(console.is_empty(), "console messages: {console:#?}");

    // A screenshot: the right size and far from blank.
    let shot = dir.join("shot.png");
    let out = run_chromium(
        &bin,
        &dir.join("profile-shot"),
        &page,
        &[
            &format!("--screenshot={}", shot.display()),
            "--window-size=1280,2000",
        ],
    );
    assert!(
        out.status.success(),
        "chromium --screenshot failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let png =
        std::fs::read(&shot).unwrap_or_else(|e| panic!("no screenshot at {}: {e}", shot.display()));
    assert_eq!(png_size(&png), Some((1280, 2000)));
    // A blank 1280×2000 page compresses to a few kilobytes; charts and text do not.
    assert!(png.len() > 40_000, "screenshot is only {} bytes", png.len());
    let console = console_lines(&out.stderr);
    assert!(console.is_empty(), "console messages: {console:#?}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn console_detection_sees_script_errors() {
    // Guards the check above: a page with a failing script must produce console lines.
    let Some(bin) = find_chromium() else {
        eprintln!("skipped: no chromium on PATH");
        return;
    };
    let dir = std::env::temp_dir().join(format!(
        "accellm-report-chromium-bad-{}",
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{e}"));
    let page = dir.join("bad.html");
    std::fs::write(
        &page,
        "<!DOCTYPE html><html><body><script>missingFunction();</script></body></html>",
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let out = run_chromium(&bin, &dir.join("profile"), &page, &["--dump-dom"]);
    assert!(
        !console_lines(&out.stderr).is_empty(),
        "a script error went unnoticed"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
