//! `spoa echo`: the reference agent. Every argument of every message comes back as a
//! variable of the same name and type.

use std::convert::Infallible;
use std::future::Ready;
use std::process::ExitCode;
use std::sync::LazyLock;

use anyhow::Context as _;
use spoa_runtime::admin::{Health, serve_admin};
use spoa_runtime::unix_socket::SocketPermissions;
use spoa_runtime::{CancellationToken, Request, Server, handler_fn, sd_notify};
use spop_proto::frame::DEFAULT_MAX_FRAME_SIZE;
use spop_proto::{Actions, Scope};
use tracing::{info, warn};

use crate::args::Addr;
use crate::net::AnyListener;

/// Run the reference agent: every argument comes back as a variable.
///
/// For each argument of each message, the echo agent sets a variable named after the
/// argument (unnamed ones: `arg0`, `arg1`... by position in the message) holding the same
/// typed value. HAProxy reads it as `var(<scope>.<var-prefix>.<name>)`.
///
/// Prints `listening on ADDR` to stderr once bound; Ctrl-C or SIGTERM shut down gracefully.
/// Logs go to stderr, filtered by RUST_LOG (default `info`).
///
/// For operators: --admin serves `/healthz` (200 while serving, 503 while starting or
/// draining) and `/metrics` (Prometheus text); under systemd (`NOTIFY_SOCKET` set, a
/// `Type=notify` unit) it sends READY=1 once listening, STOPPING=1 when the shutdown begins,
/// and WATCHDOG=1 pings when the unit sets `WatchdogSec=`. A Unix socket can be given a mode,
/// owner and group so that HAProxy's user may connect.
#[derive(Debug, clap::Args)]
pub(crate) struct EchoArgs {
    /// Listen address: host:port (port 0 picks one), or a Unix socket (unix:/path or any path
    /// with a '/'; a stale socket file is removed).
    #[arg(long, value_name = "ADDR")]
    listen: Addr,
    /// Variable scope: proc, sess, txn, req or res.
    #[arg(long, default_value = "txn")]
    scope: Scope,
    /// Largest frame accepted and announced (negotiated down to HAProxy's offer).
    #[arg(long, default_value_t = DEFAULT_MAX_FRAME_SIZE)]
    max_frame_size: u32,
    /// Do not offer pipelining (one NOTIFY at a time per connection).
    #[arg(long)]
    no_pipelining: bool,
    /// NOTIFYs in flight per connection before reading pauses.
    #[arg(long, default_value_t = 20)]
    max_in_flight: usize,
    /// Never send an empty ACK (HAProxy 3.1.0 stalls on them): pad with a harmless unset-var.
    #[arg(long)]
    pad_empty_ack: bool,
    /// Connections served at once; further ones wait in the listen queue.
    #[arg(long, default_value_t = 10_000)]
    max_connections: usize,
    /// Time allowed for HAProxy's HELLO after a connection opens (e.g. `10s`, `500ms`).
    #[arg(long, default_value = "10s", value_parser = crate::args::parse_duration)]
    hello_timeout: std::time::Duration,
    /// Serve `/healthz` and `/metrics` over HTTP on this address (host:port).
    #[arg(long, value_name = "ADDR")]
    admin: Option<String>,
    /// Mode of the Unix socket file, in octal (e.g. 660).
    #[arg(long, value_name = "MODE", value_parser = spoa_runtime::unix_socket::parse_mode)]
    unix_mode: Option<u32>,
    /// Owner of the Unix socket file (user name or uid).
    #[arg(long, value_name = "USER")]
    unix_owner: Option<String>,
    /// Group of the Unix socket file (group name or gid), e.g. HAProxy's.
    #[arg(long, value_name = "GROUP")]
    unix_group: Option<String>,
    /// Worker threads: 0 (the default of every spoa command) means one per available core,
    /// within the CPU affinity `taskset` sets; 1 runs a single-threaded runtime.
    #[arg(long, default_value_t = 0)]
    pub(crate) threads: usize,
}

static UNNAMED: LazyLock<Vec<String>> =
    LazyLock::new(|| (0..256).map(|i| format!("arg{i}")).collect());

/// The ACK of the echo agent for one NOTIFY.
pub(crate) fn echo_actions(req: &Request, scope: Scope) -> Actions {
    let mut actions = Actions::with_capacity(req.notify.payload().len() + 32);
    for m in req.messages() {
        for (i, a) in m.args().enumerate() {
            let name = if a.name.is_empty() {
                UNNAMED[i].as_str()
            } else {
                a.name
            };
            actions.set_var(scope, name, a.value);
        }
    }
    actions
}

pub(crate) async fn run(args: &EchoArgs) -> anyhow::Result<ExitCode> {
    let signal = crate::shutdown_signal()?;
    let health = Health::new();
    let stop_admin = CancellationToken::new();
    let metrics = std::sync::Arc::new(spoa_runtime::Metrics::default());
    // the admin endpoint first: /healthz says 503 "starting" until the agent listens
    if let Some(a) = &args.admin {
        let l = tokio::net::TcpListener::bind(a.as_str())
            .await
            .with_context(|| format!("cannot listen on {a} (--admin)"))?;
        eprintln!("admin endpoint on http://{}", l.local_addr()?);
        tokio::spawn(serve_admin(
            l,
            health.clone(),
            metrics.clone(),
            stop_admin.clone().cancelled_owned(),
        ));
    }
    let perms = SocketPermissions {
        mode: args.unix_mode,
        owner: args.unix_owner.clone(),
        group: args.unix_group.clone(),
    };
    let listener = AnyListener::bind_with(&args.listen, &perms).await?;
    let server = Server::builder()
        .max_frame_size(args.max_frame_size)
        .pipelining(!args.no_pipelining)
        .max_in_flight(args.max_in_flight.max(1))
        .pad_empty_ack(args.pad_empty_ack)
        .max_connections(args.max_connections.max(1))
        .hello_timeout(Some(args.hello_timeout))
        .metrics(metrics)
        .build();
    let scope = args.scope;
    let handler = handler_fn(move |req: Request| -> Ready<Result<Actions, Infallible>> {
        std::future::ready(Ok(echo_actions(&req, scope)))
    });
    let unix_path = listener.unix_path();
    health.set_serving();
    eprintln!("listening on {}", listener.local_addr());
    notify_systemd("READY=1");
    let watchdog = sd_notify::spawn_watchdog();
    let draining = health.clone();
    let shutdown = async move {
        signal.await;
        draining.set_draining();
        notify_systemd("STOPPING=1");
    };
    info!(scope = %scope, max_frame_size = args.max_frame_size, pipelining = !args.no_pipelining, "echo agent started");
    match listener {
        AnyListener::Tcp(l) => server.serve(l, handler, shutdown).await,
        AnyListener::Unix(l, _) => server.serve(l, handler, shutdown).await,
    }
    health.set_stopped();
    stop_admin.cancel();
    if let Some(w) = watchdog {
        w.abort();
    }
    if let Some(p) = unix_path {
        let _ = std::fs::remove_file(p);
    }
    let m = server.metrics().snapshot();
    info!(
        connections = m.connections_accepted,
        notifies = m.notifies,
        acks = m.acks,
        health_checks = m.health_checks,
        "echo agent stopped"
    );
    Ok(ExitCode::SUCCESS)
}

/// Tells systemd (when it asked, with `NOTIFY_SOCKET`); a failure is logged, not fatal.
fn notify_systemd(state: &str) {
    if let Err(e) = sd_notify::notify(state) {
        warn!(error = %e, state, "cannot notify systemd");
    }
}
