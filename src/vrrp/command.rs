//! Runs an operator's command (a check script, a notify hook) without a
//! shell, for a bounded time, with its output kept for the debug log.

use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use tokio::io::AsyncReadExt;

/// Why a command gave no exit status.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The argument list is empty.
    #[error("empty command")]
    Empty,
    /// It could not be started.
    #[error("could not start: {0}")]
    Spawn(std::io::Error),
    /// Waiting for it failed.
    #[error("waiting for it failed: {0}")]
    Wait(std::io::Error),
    /// Still running at the timeout: killed.
    #[error("killed after {0:?}")]
    Timeout(Duration),
}

/// Bytes of stdout and of stderr kept.
const OUTPUT_KEPT: u64 = 4096;

/// How long output is still read after the command exited (a child it left
/// behind may hold the pipes open).
const OUTPUT_GRACE: Duration = Duration::from_millis(100);

/// Runs `cmd` (program and arguments) with stdin closed, in a process group
/// of its own; past `timeout` the whole group is killed (a `sh -c` and what
/// it started). Returns its exit status and what it wrote.
pub async fn run(cmd: &[String], timeout: Duration) -> Result<(ExitStatus, String), RunError> {
    let (program, args) = cmd.split_first().ok_or(RunError::Empty)?;
    let mut child = tokio::process::Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .process_group(0)
        .spawn()
        .map_err(RunError::Spawn)?;
    // Read while it runs, so a talkative command never blocks on a full pipe.
    let output = tokio::spawn(collect(child.stdout.take(), child.stderr.take()));
    let status = match tokio::time::timeout(timeout, child.wait()).await {
        Ok(Ok(status)) => status,
        Ok(Err(e)) => return Err(RunError::Wait(e)),
        Err(_) => {
            if let Some(pid) = child.id().and_then(|p| i32::try_from(p).ok()) {
                // The group's id is the leader's pid (process_group(0)).
                let _ = nix::sys::signal::killpg(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL);
            }
            let _ = child.kill().await;
            output.abort();
            return Err(RunError::Timeout(timeout));
        }
    };
    let mut output = output;
    let text = match tokio::time::timeout(OUTPUT_GRACE, &mut output).await {
        Ok(Ok(text)) => text,
        _ => {
            // A child it left behind holds the pipes: stop reading them.
            output.abort();
            String::new()
        }
    };
    Ok((status, text))
}

async fn collect(stdout: Option<tokio::process::ChildStdout>, stderr: Option<tokio::process::ChildStderr>) -> String {
    async fn kept(r: Option<impl tokio::io::AsyncRead + Unpin>) -> String {
        let Some(mut r) = r else { return String::new() };
        let mut buf = Vec::new();
        let _ = (&mut r).take(OUTPUT_KEPT).read_to_end(&mut buf).await;
        let _ = tokio::io::copy(&mut r, &mut tokio::io::sink()).await;
        String::from_utf8_lossy(&buf).trim_end().to_string()
    }
    let (out, err) = tokio::join!(kept(stdout), kept(stderr));
    match (out.is_empty(), err.is_empty()) {
        (_, true) => out,
        (true, false) => err,
        (false, false) => format!("{out}\n{err}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sh(script: &str) -> Vec<String> {
        vec!["/bin/sh".into(), "-c".into(), script.into()]
    }

    #[tokio::test]
    async fn status_output_and_timeout() {
        let (status, out) = run(&sh("echo hello; echo oops >&2; exit 3"), Duration::from_secs(5)).await.expect("ran");
        assert_eq!((status.code(), out.as_str()), (Some(3), "hello\noops"));
        let started = std::time::Instant::now();
        assert!(matches!(run(&sh("sleep 5"), Duration::from_millis(200)).await, Err(RunError::Timeout(_))));
        assert!(started.elapsed() < Duration::from_secs(2));
        // What the command started dies with it at the timeout.
        let marker = std::env::temp_dir().join(format!("vipd-command-test-{}", std::process::id()));
        let script = format!("(sleep 1; touch {}) & sleep 5", marker.display());
        assert!(matches!(run(&sh(&script), Duration::from_millis(200)).await, Err(RunError::Timeout(_))));
        tokio::time::sleep(Duration::from_millis(1500)).await;
        assert!(!marker.exists(), "a grandchild outlived the timeout");
        // A child left behind holding the pipe does not hold the verdict.
        let started = std::time::Instant::now();
        let (status, _) = run(&sh("sleep 5 & exit 0"), Duration::from_secs(3)).await.expect("ran");
        assert!(status.success() && started.elapsed() < Duration::from_secs(2));
        // Much output is read, kept in part, and does not block the command.
        let (status, out) =
            run(&sh("head -c 200000 /dev/zero | tr '\\0' x"), Duration::from_secs(5)).await.expect("ran");
        assert!(status.success() && out.len() == OUTPUT_KEPT as usize);
        assert!(matches!(run(&["/nonexistent/x".into()], Duration::from_secs(1)).await, Err(RunError::Spawn(_))));
        assert!(matches!(run(&[], Duration::from_secs(1)).await, Err(RunError::Empty)));
    }
}
