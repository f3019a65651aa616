//! `paretoserve-fastpath`: the ParetoServe router's compiled front on its public data port.
//!
//! The Python router's plain model proxy (`POST /v2/models/{m}/infer`) costs ~0.4 ms of CPU per request in
//! uvicorn and Starlette; the target is >= 10,000 requests/s per core. So this binary takes the data port,
//! serves that one path itself -- exactly as the Python proxy does, from a table the router pushes over a
//! Unix socket -- and passes every other request to the Python router on a loopback port. This file holds
//! the command line, the runtime (one thread unless `--threads` says more), the start (bind, then die with
//! the parent) and the stop (SIGTERM/SIGINT: stop accepting, let requests in progress finish for at most
//! 5 s, exit 0).

mod admission;
mod body;
mod control;
mod errors;
mod fallback;
mod http1;
mod log;
mod proxy;
mod pyfmt;
mod server;
mod state;
mod stats;
mod table;
mod upstream;

use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::process::ExitCode;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, UnixListener};
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::watch;

use crate::fallback::Fallback;
use crate::state::App;
use crate::table::BaseUrl;

const USAGE: &str = "usage: paretoserve-fastpath --listen HOST:PORT --fallback http://127.0.0.1:PORT \
                     --control /path/control.sock [--threads N]";
/// Longest wait for requests in progress after SIGTERM/SIGINT.
const DRAIN: Duration = Duration::from_secs(5);

#[derive(Debug, PartialEq)]
struct Args {
    listen: String,
    fallback: BaseUrl,
    control: String,
    threads: usize,
}

fn parse_args(argv: &[String]) -> Result<Option<Args>, String> {
    let (mut listen, mut fallback, mut control, mut threads) = (None, None, None, 1usize);
    let mut i = 0;
    while i < argv.len() {
        let (flag, inline) = match argv[i].split_once('=') {
            Some((flag, value)) if flag.starts_with("--") => (flag, Some(value.to_owned())),
            _ => (argv[i].as_str(), None),
        };
        if matches!(flag, "-h" | "--help") {
            return Ok(None);
        }
        let value = match inline {
            Some(value) => value,
            None => {
                i += 1;
                argv.get(i).cloned().ok_or_else(|| format!("{flag} needs a value"))?
            }
        };
        match flag {
            "--listen" => listen = Some(value),
            "--fallback" => fallback = Some(BaseUrl::parse(&value).map_err(|e| format!("--fallback: {e}"))?),
            "--control" if !value.is_empty() => control = Some(value),
            "--threads" => {
                threads = value
                    .parse()
                    .ok()
                    .filter(|n| (1..=1024).contains(n))
                    .ok_or_else(|| format!("--threads: must be an integer in [1, 1024], got {value:?}"))?
            }
            _ => return Err(format!("unknown argument {flag:?}")),
        }
        i += 1;
    }
    Ok(Some(Args {
        listen: listen.ok_or("--listen is required")?,
        fallback: fallback.ok_or("--fallback is required")?,
        control: control.ok_or("--control is required")?,
        threads,
    }))
}

/// Die with the parent (the Python router): the kernel sends SIGTERM when it exits.
fn die_with_parent() {
    // SAFETY: prctl(PR_SET_PDEATHSIG) takes plain integers and touches no memory of ours.
    let rc = unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM as libc::c_ulong, 0, 0, 0) };
    if rc != 0 {
        log::info(format_args!("prctl(PR_SET_PDEATHSIG) failed: {}", std::io::Error::last_os_error()));
    }
}

async fn run(args: Args) -> ExitCode {
    let listener = match TcpListener::bind(&args.listen).await {
        Ok(listener) => listener,
        Err(e) => {
            eprintln!("paretoserve-fastpath: cannot listen on {}: {e}", args.listen);
            return ExitCode::from(3);
        }
    };
    let listen = listener.local_addr().map_or_else(|_| args.listen.clone(), |a| a.to_string());
    if std::fs::symlink_metadata(&args.control).is_ok_and(|meta| meta.file_type().is_socket()) {
        let _ = std::fs::remove_file(&args.control); // a stale socket from an earlier run
    }
    let control = match UnixListener::bind(&args.control) {
        Ok(control) => control,
        Err(e) => {
            eprintln!("paretoserve-fastpath: cannot bind the control socket {}: {e}", args.control);
            return ExitCode::from(3);
        }
    };
    if let Err(e) = std::fs::set_permissions(&args.control, std::fs::Permissions::from_mode(0o600)) {
        eprintln!("paretoserve-fastpath: cannot restrict {}: {e}", args.control);
        return ExitCode::from(3);
    }
    die_with_parent();
    let (Ok(mut term), Ok(mut int)) = (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) else {
        eprintln!("paretoserve-fastpath: cannot install signal handlers");
        return ExitCode::from(1);
    };
    let app = Arc::new(App::new(listen.clone(), Fallback::new(args.fallback.clone())));
    let (stop, stopped) = watch::channel(false);
    let data = tokio::spawn(server::accept(app.clone(), listener, stopped.clone()));
    let ctl = tokio::spawn(control::serve(app.clone(), control, stopped));
    log::info(format_args!(
        "serving {listen} ({} thread{}), fallback {}, control {}",
        args.threads,
        if args.threads == 1 { "" } else { "s" },
        args.fallback.text,
        args.control
    ));
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    app.stop(); // every connection closes after its answer in progress; idle ones at once
    let _ = stop.send(true);
    let _ = data.await;
    let _ = ctl.await;
    let _ = std::fs::remove_file(&args.control);
    let until = tokio::time::Instant::now() + DRAIN;
    while app.connections.load(Relaxed) > 0 && tokio::time::Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    ExitCode::SUCCESS
}

fn main() -> ExitCode {
    let argv: Vec<String> = std::env::args().skip(1).collect();
    let args = match parse_args(&argv) {
        Ok(Some(args)) => args,
        Ok(None) => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Err(message) => {
            eprintln!("paretoserve-fastpath: {message} ({USAGE})");
            return ExitCode::from(2);
        }
    };
    let runtime = if args.threads == 1 {
        tokio::runtime::Builder::new_current_thread().enable_all().build()
    } else {
        tokio::runtime::Builder::new_multi_thread().worker_threads(args.threads).enable_all().build()
    };
    match runtime {
        Ok(runtime) => {
            let code = runtime.block_on(run(args));
            runtime.shutdown_timeout(Duration::from_millis(100));
            code
        }
        Err(e) => {
            eprintln!("paretoserve-fastpath: cannot start the runtime: {e}");
            ExitCode::from(1)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(line: &str) -> Result<Option<Args>, String> {
        parse_args(&line.split_whitespace().map(str::to_owned).collect::<Vec<_>>())
    }

    #[test]
    fn command_line() {
        let parsed = args("--listen 127.0.0.1:0 --fallback http://127.0.0.1:9 --control /tmp/c.sock").unwrap().unwrap();
        assert_eq!((parsed.listen.as_str(), parsed.threads, parsed.fallback.port), ("127.0.0.1:0", 1, 9));
        let parsed = args("--listen=:8080 --fallback=http://h:1 --control=/c --threads=4").unwrap().unwrap();
        assert_eq!(parsed.threads, 4);
        assert!(args("--help").unwrap().is_none());
        assert!(args("--listen a:1 --fallback http://h:1").unwrap_err().contains("--control"));
        assert!(args("--listen a:1 --fallback https://h:1 --control /c").is_err());
        assert!(args("--listen a:1 --fallback http://h:1 --control /c --threads 0").is_err());
        assert!(args("--listen a:1 --fallback http://h:1 --control /c --bogus 1").is_err());
        assert!(args("--listen").unwrap_err().contains("needs a value"));
    }
}
