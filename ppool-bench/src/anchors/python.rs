//! Anchors in Python: `multiprocessing.Pool` (fork context) and mpire.
//!
//! The Python side lives in `python/anchors.py` (embedded into the binary and written
//! next to a virtualenv under the cargo target directory, created on first use with
//! `mpire` installed from PyPI). Anything missing is reported as a note and skipped.

use std::ffi::OsString;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use serde_json::Value;

use crate::BenchResult;
use crate::children::capture_stdout;

const SCRIPT: &str = include_str!("../../python/anchors.py");
const VENV_DIR: &str = "ppool-bench-venv";

/// A Python interpreter able to run `anchors.py`.
#[derive(Debug, Clone)]
pub(crate) struct PythonEnv {
    python: PathBuf,
    script: PathBuf,
}

/// What one run of `anchors.py` measured.
#[derive(Debug, Default)]
pub(crate) struct PyOutput {
    pub(crate) values: Vec<(String, Value)>,
    pub(crate) notes: Vec<String>,
}

impl PythonEnv {
    /// Finds or creates the virtualenv; `Err` carries a note saying why Python is skipped.
    /// Progress and non-fatal problems are printed to stderr.
    pub(crate) fn prepare() -> Result<PythonEnv, String> {
        let base: OsString =
            std::env::var_os("PPOOL_BENCH_PYTHON").unwrap_or_else(|| "python3".into());
        let dir = venv_dir();
        let venv_python = dir.join("bin").join("python");
        if !venv_python.exists() {
            eprintln!("python: creating virtualenv {}", dir.display());
            if let Err(e) = quiet(Command::new(&base).arg("-m").arg("venv").arg(&dir)) {
                eprintln!("python: cannot create a virtualenv ({e}); using {base:?} directly");
            }
        }
        let python = if venv_python.exists() {
            venv_python
        } else {
            PathBuf::from(&base)
        };
        quiet(Command::new(&python).args(["-c", "import multiprocessing"])).map_err(|e| {
            format!(
                "python anchors skipped: no usable {} ({e})",
                file_name(&python)
            )
        })?;
        if quiet(Command::new(&python).args(["-c", "import mpire"])).is_err() {
            eprintln!("python: installing mpire with pip");
            let pip = Command::new(&python)
                .args([
                    "-m",
                    "pip",
                    "install",
                    "--quiet",
                    "--disable-pip-version-check",
                ])
                .arg("mpire")
                .stdin(Stdio::null())
                .status();
            if !matches!(pip, Ok(s) if s.success()) {
                eprintln!("python: could not install mpire; its anchors will be skipped");
            }
        }
        let script = dir.join("anchors.py");
        write_if_changed(&script, SCRIPT)
            .map_err(|e| format!("python anchors skipped: cannot write anchors.py ({e})"))?;
        Ok(PythonEnv { python, script })
    }

    /// Runs `anchors.py METRIC ARGS...` and parses its JSON.
    pub(crate) fn run(&self, metric: &str, args: &[String]) -> BenchResult<PyOutput> {
        let mut cmd = Command::new(&self.python);
        cmd.arg(&self.script).arg(metric).args(args);
        let stdout = capture_stdout(&mut cmd)?;
        let json: Value = serde_json::from_str(stdout.trim())
            .map_err(|e| format!("anchors.py {metric}: bad JSON ({e}): {stdout:?}"))?;
        let mut out = PyOutput::default();
        if let Some(values) = json.get("values").and_then(Value::as_object) {
            out.values = values.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        }
        if let Some(notes) = json.get("notes").and_then(Value::as_array) {
            out.notes = notes
                .iter()
                .filter_map(Value::as_str)
                .map(str::to_owned)
                .collect();
        }
        Ok(out)
    }

    /// The command `anchors.py METRIC ARGS...`, for a caller that reads its output itself.
    pub(crate) fn command(&self, metric: &str, args: &[String]) -> Command {
        let mut cmd = Command::new(&self.python);
        cmd.arg(&self.script).arg(metric).args(args);
        cmd
    }

    /// A command running the interpreter (for timing `python -c ...` processes).
    pub(crate) fn interpreter(&self) -> Command {
        Command::new(&self.python)
    }
}

/// `<cargo target dir>/ppool-bench-venv`, or under the temp dir if not run from `target/`.
fn venv_dir() -> PathBuf {
    let target = std::env::current_exe().ok().and_then(|exe| {
        let profile_dir = exe.parent()?;
        let target = profile_dir.parent()?;
        target
            .join("CACHEDIR.TAG")
            .exists()
            .then(|| target.to_path_buf())
    });
    target.unwrap_or_else(std::env::temp_dir).join(VENV_DIR)
}

/// The last component of `path`, for messages that end up in the results file.
fn file_name(path: &Path) -> String {
    path.file_name()
        .map_or_else(String::new, |n| n.to_string_lossy().into_owned())
}

/// Runs a command with all output discarded; `Err` unless it exits with 0.
fn quiet(cmd: &mut Command) -> BenchResult<()> {
    let status = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()?;
    if !status.success() {
        return Err(format!("exited with {status}").into());
    }
    Ok(())
}

fn write_if_changed(path: &Path, contents: &str) -> std::io::Result<()> {
    if fs::read_to_string(path).is_ok_and(|old| old == contents) {
        return Ok(());
    }
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir)?;
    }
    fs::write(path, contents)
}
