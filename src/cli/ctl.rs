//! `simian ctl`: send one command to a running simian's `AdminSocket` and print
//! its answer (SPEC section 11).

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

/// The socket to talk to: `-s PATH`, else the `AdminSocket` of the file.
pub fn socket_path(socket: Option<&Path>, config: &Path) -> Result<PathBuf, String> {
    if let Some(p) = socket {
        return Ok(p.to_path_buf());
    }
    match crate::config::Config::load(config) {
        Ok(c) => c.global.admin_socket.clone().ok_or_else(|| {
            format!(
                "{} has no AdminSocket; name the socket with -s PATH",
                config.display()
            )
        }),
        Err(e) => Err(format!("cannot read {}: {e}", config.display())),
    }
}

/// Send `words` as one line; print the answer. Exit 0 when simian did it, 1 when
/// it refused (the reason on stderr) or could not be reached.
pub fn run(path: &Path, words: &[String]) -> ExitCode {
    match exchange(path, &words.join(" ")) {
        Ok((true, text)) => {
            print!("{text}");
            ExitCode::SUCCESS
        }
        Ok((false, text)) => {
            eprint!("simian ctl: {text}");
            ExitCode::from(1)
        }
        Err(e) => {
            eprintln!("simian ctl: {}: {e}", path.display());
            ExitCode::from(1)
        }
    }
}

fn exchange(path: &Path, line: &str) -> std::io::Result<(bool, String)> {
    let mut s = UnixStream::connect(path)?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    s.set_write_timeout(Some(Duration::from_secs(10)))?;
    s.write_all(format!("{line}\n").as_bytes())?;
    let mut reply = String::new();
    s.read_to_string(&mut reply)?;
    match reply.split_once('\n') {
        Some(("ok", text)) => Ok((true, text.to_string())),
        Some(("error", text)) => Ok((false, text.to_string())),
        _ => Err(std::io::Error::other(format!(
            "unexpected answer: {reply:?}"
        ))),
    }
}
