//! `spoa`: the spoa-rs command line tool. An echo agent, a client playing HAProxy, the
//! `option spop-check` health check, a frame decoder, a replayer, a load generator and a null
//! agent for benchmarks.

mod args;
mod bench;
mod check;
mod client;
mod decode;
mod echo;
mod explain;
mod genconfig;
mod lint;
mod net;
mod null_agent;
mod recording;
mod replay;
mod tap;

use std::future::Future;
use std::io::IsTerminal;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use tokio::signal::unix::{SignalKind, signal};
use tracing::info;
use tracing_subscriber::EnvFilter;

/// SPOP (HAProxy SPOE) toolkit: agents, a client, a health check, a decoder, a replayer, a
/// load generator, and tools for operators (explain, config, lint, tap).
///
/// `spoa <command> --help` shows each command's full help. Logs of the long-running commands
/// (echo, null-agent, tap) go to stderr, filtered by RUST_LOG (default `info`, e.g.
/// `RUST_LOG=debug` or `RUST_LOG=spoa_runtime=trace`).
#[derive(Debug, Parser)]
#[command(name = "spoa", version, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

// The commands' help is the doc comment of their Args struct (first paragraph: the short
// help of `spoa --help`; all of it: `spoa <command> --help`): no doc comments here, they
// would replace it.
#[derive(Debug, Subcommand)]
enum Command {
    Echo(echo::EchoArgs),
    Client(client::ClientArgs),
    Check(check::CheckArgs),
    Decode(decode::DecodeArgs),
    Replay(replay::ReplayArgs),
    Bench(bench::BenchArgs),
    NullAgent(null_agent::NullAgentArgs),
    Explain(explain::ExplainArgs),
    Config(genconfig::ConfigArgs),
    Lint(lint::LintArgs),
    Tap(tap::TapArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Decode(a) => decode::run(&a),
        Command::Echo(a) => {
            init_logging();
            runtime(a.threads)?.block_on(echo::run(&a))
        }
        Command::NullAgent(a) => {
            init_logging();
            runtime(a.threads)?.block_on(null_agent::run(&a))
        }
        Command::Bench(a) => {
            if a.null_agent {
                init_logging();
            }
            runtime(a.threads)?.block_on(bench::run(&a))
        }
        Command::Client(a) => runtime(1)?.block_on(client::run(&a)),
        Command::Check(a) => runtime(1)?.block_on(check::run(&a)),
        Command::Replay(a) => match runtime(1)?.block_on(replay::run(&a)) {
            // under --json a failure is JSON on stdout too
            Err(e) if a.json => {
                println!(
                    "{}",
                    serde_json::json!({ "ok": false, "error": format!("{e:#}") })
                );
                Ok(ExitCode::FAILURE)
            }
            other => other,
        },
        Command::Explain(a) => explain::run(&a),
        Command::Config(a) => genconfig::run(&a),
        Command::Lint(a) => lint::run(&a),
        Command::Tap(a) => {
            init_logging();
            runtime(a.threads)?.block_on(tap::run(&a))
        }
    }
}

/// A tokio runtime: single-threaded for 1 thread, otherwise multi-threaded (0: one worker
/// per available core, which respects the CPU affinity set by `taskset`).
fn runtime(threads: usize) -> anyhow::Result<tokio::runtime::Runtime> {
    let threads = if threads == 0 {
        std::thread::available_parallelism().map_or(1, std::num::NonZero::get)
    } else {
        threads
    };
    let rt = if threads == 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads)
            .enable_all()
            .build()?
    };
    Ok(rt)
}

/// Logs to stderr, filtered by RUST_LOG (default `info`).
fn init_logging() {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .try_init();
}

/// Completes on the first SIGINT (Ctrl-C) or SIGTERM. Must be called inside the runtime; the
/// handlers are installed before it returns.
/// The first SIGTERM/SIGINT (graceful shutdown), and the one after it (stop now).
pub(crate) fn shutdown_signals() -> anyhow::Result<(
    impl Future<Output = ()> + Send + 'static,
    impl Future<Output = ()> + Send + 'static,
)> {
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let first = async move {
        tokio::select! {
            _ = term.recv() => info!("SIGTERM received: shutting down (a second signal stops at once)"),
            _ = int.recv() => info!("SIGINT received: shutting down (a second signal stops at once)"),
        }
        // listen for the second one from now on
        let _ = tx.send(());
    };
    let second = async move {
        if rx.await.is_err() {
            return std::future::pending().await;
        }
        // registered after the first signal, which would otherwise count again
        let (Ok(mut term), Ok(mut int)) = (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) else {
            return std::future::pending().await;
        };
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
    };
    Ok((first, second))
}

pub(crate) fn shutdown_signal() -> anyhow::Result<impl Future<Output = ()> + Send + 'static> {
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    Ok(async move {
        tokio::select! {
            _ = term.recv() => info!("SIGTERM received: shutting down"),
            _ = int.recv() => info!("SIGINT received: shutting down"),
        }
    })
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    #[test]
    fn cli_is_consistent() {
        super::Cli::command().debug_assert();
    }
}
