//! `spoa echo`: the reference agent. Every argument of every message comes back as a
//! variable of the same name and type.

use std::borrow::Cow;
use std::convert::Infallible;
use std::fmt;
use std::future::{Future, Ready};
use std::process::ExitCode;
use std::str::FromStr;
use std::sync::LazyLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::Context as _;
use spoa_runtime::admin::{Health, serve_admin};
use spoa_runtime::unix_socket::SocketPermissions;
use spoa_runtime::{
    BoxError, CancellationToken, DEFAULT_ERROR_VAR, DEFAULT_MAX_IN_FLIGHT, Handler, LameDuck,
    Request, Server, handler_fn, sd_notify,
};
use spop_proto::frame::DEFAULT_MAX_FRAME_SIZE;
use spop_proto::{Actions, Scope, TypedData, is_valid_var_name};
use tracing::{info, warn};

use crate::args::Addr;
use crate::net::AnyListener;

/// Run the reference agent: every argument comes back as a variable.
///
/// For each argument of each message, the echo agent sets a variable named after the
/// argument (unnamed ones: `arg0`, `arg1`... by position in the message) holding the same
/// typed value. HAProxy reads it as `var(<scope>.<var-prefix>.<name>)`.
///
/// HAProxy ignores variable names with bytes outside `A-Z a-z 0-9 . _`, so each such byte
/// becomes `_`: `args client-ip=src` sets `client_ip` (read it as
/// `var(txn.<var-prefix>.client_ip)`). Keep `<scope>.<var-prefix>.<name>` within 63 bytes.
///
/// Prints `listening on ADDR` to stderr once bound. Logs go to stderr, filtered by RUST_LOG
/// (default `info`).
///
/// Stopping (SIGTERM or Ctrl-C) loses no request: first a lame-duck period (--lame-duck,
/// default 7s, skipped when HAProxy has no connection open) during which every connection is
/// served while HAProxy's health checks are refused, so it marks the server DOWN (choose the
/// period from the backend's `check inter` and `fall`: at least fall x inter plus one inter);
/// with --reuse-port the port is released at once instead, for a new instance started on the
/// same address. Then the drain: each connection answers what still arrives and closes once
/// quiet. A second signal stops at once. `--listen systemd` serves the socket passed by
/// systemd socket activation (LISTEN_FDS).
///
/// Deadlines: set --processing-timeout to the `timeout processing` of the spoe-agent section
/// (default 500ms, as in the configs we ship). A NOTIFY still unanswered at 90% of it gets the
/// fallback ACK, which sets `txn.<prefix>.spoa_error` (1 handler error, 2 timeout, 3 panic,
/// 4 overload, 5 ACK too large).
///
/// Bad days on demand, for tests and demos (like the processing delay of HAProxy's example
/// agent): --delay makes the selected NOTIFYs wait before their answer, --fail makes them fail.
/// Selectors (--delay-which, --fail-which): `all`; `share:F` a deterministic pseudo-random
/// fraction F of NOTIFYs (0 to 1); `every:N` every Nth NOTIFY; `match:TEXT` NOTIFYs with a
/// STRING or BINARY argument containing TEXT. Example: `spoa echo --listen 127.0.0.1:12345
/// --delay 3s --delay-which match:/slow` hangs every request whose path contains /slow.
///
/// For operators: --admin serves `/healthz` (200 while serving, 503 while starting or
/// draining) and `/metrics` (Prometheus text); under systemd (`NOTIFY_SOCKET` set, a
/// `Type=notify` unit) it sends READY=1 once listening, STOPPING=1 when the shutdown begins,
/// and WATCHDOG=1 pings when the unit sets `WatchdogSec=`. A Unix socket can be given a mode,
/// owner and group so that HAProxy's user may connect.
#[derive(Debug, clap::Args)]
#[command(
    after_help = "Variable names: an unnamed argument becomes arg0, arg1... (its position \
in the message). HAProxy ignores variable names with bytes outside A-Z a-z 0-9 . _, so each such \
byte becomes '_': `args client-ip=src` sets client_ip, read as var(txn.<var-prefix>.client_ip). \
HAProxy keeps <scope>.<var-prefix>.<name> whole only up to 63 bytes."
)]
pub(crate) struct EchoArgs {
    /// Listen address: host:port (port 0 picks one), or a Unix socket (unix:/path or any path
    /// with a '/'; a stale socket file is removed), or `systemd` for the socket passed by
    /// socket activation.
    #[arg(long, value_name = "ADDR")]
    listen: Addr,
    /// Set SO_REUSEPORT, so a new instance can listen on the same port before this one stops
    /// (hot upgrade); stopping then releases the port first instead of refusing health checks.
    #[arg(long)]
    reuse_port: bool,
    /// Lame-duck period when stopping (see above); `0s` skips it.
    #[arg(long, default_value = "7s", value_parser = crate::args::parse_duration)]
    lame_duck: Duration,
    /// While draining, close a connection once nothing arrived on it for this long.
    #[arg(long, default_value = "1s", value_parser = crate::args::parse_duration)]
    drain_quiet: Duration,
    /// Variable scope: proc, sess, txn, req or res.
    #[arg(long, default_value = "txn")]
    scope: Scope,
    /// Largest frame accepted and announced (negotiated down to HAProxy's offer).
    #[arg(long, default_value_t = DEFAULT_MAX_FRAME_SIZE)]
    max_frame_size: u32,
    /// Do not offer pipelining (one NOTIFY at a time per connection).
    #[arg(long)]
    no_pipelining: bool,
    /// NOTIFYs in flight per connection before reading pauses (a memory bound: HAProxy keeps
    /// at most 20 per connection itself).
    #[arg(long, default_value_t = DEFAULT_MAX_IN_FLIGHT)]
    max_in_flight: usize,
    /// Send ACKs without actions as they are. By default they are padded with a harmless
    /// unset-var txn.spoa_pad_ack, because HAProxy 3.1.0 stalls on ACKs without actions.
    #[arg(long)]
    no_pad_empty_ack: bool,
    /// Accepted for compatibility: padding is the default now.
    #[arg(long, hide = true)]
    pad_empty_ack: bool,
    /// HAProxy's `timeout processing` for this agent (e.g. `500ms`); the fallback ACK goes out
    /// at 90% of it, or at --handler-budget.
    #[arg(long, default_value = "500ms", value_parser = crate::args::parse_duration)]
    processing_timeout: Duration,
    /// Time a NOTIFY may take before its fallback ACK; must be below --processing-timeout.
    #[arg(long, value_parser = crate::args::parse_duration)]
    handler_budget: Option<Duration>,
    /// Name of the txn variable the fallback ACK sets to the failure code.
    #[arg(long, default_value = DEFAULT_ERROR_VAR)]
    error_var: String,
    /// Send fallback ACKs without the error variable.
    #[arg(long)]
    no_error_var: bool,
    /// Delay the answer to the selected NOTIFYs (--delay-which) by this long, e.g. `3s`.
    #[arg(long, value_parser = crate::args::parse_duration)]
    delay: Option<Duration>,
    /// Which NOTIFYs --delay applies to: all, share:F, every:N or match:TEXT.
    #[arg(long, default_value = "all", requires = "delay")]
    delay_which: Selector,
    /// Make the selected NOTIFYs (--fail-which) fail: `error` (the handler returns an error)
    /// or `panic` (the handler panics).
    #[arg(long, value_name = "error|panic")]
    fail: Option<FailMode>,
    /// Which NOTIFYs --fail applies to: all, share:F, every:N or match:TEXT.
    #[arg(long, default_value = "all", requires = "fail")]
    fail_which: Selector,
    /// Connections served at once; further ones wait in the listen queue.
    #[arg(long, default_value_t = 10_000)]
    max_connections: usize,
    /// Time allowed for HAProxy's HELLO after a connection opens (e.g. `10s`, `500ms`).
    #[arg(long, default_value = "10s", value_parser = crate::args::parse_duration)]
    hello_timeout: Duration,
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

/// The variable name for argument `index` of a message, named `name`: `arg<index>` when
/// unnamed, else `name` with every byte HAProxy refuses in a variable name (outside
/// `[A-Za-z0-9._]`) replaced by `_`. Borrows when nothing needs replacing.
pub(crate) fn var_name(name: &str, index: usize) -> Cow<'_, str> {
    if name.is_empty() {
        return Cow::Borrowed(UNNAMED[index.min(255)].as_str());
    }
    if is_valid_var_name(name) {
        return Cow::Borrowed(name);
    }
    Cow::Owned(
        name.chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '.' || c == '_' {
                    c
                } else {
                    '_'
                }
            })
            .collect(),
    )
}

/// The ACK of the echo agent for one NOTIFY.
pub(crate) fn echo_actions(req: &mut Request, scope: Scope) -> Actions {
    // the thread's recycled ACK buffer: no allocation per NOTIFY once it has grown to fit
    let mut actions = req.actions();
    for m in req.messages() {
        for (i, a) in m.args().enumerate() {
            actions.set_var(scope, &var_name(a.name, i), a.value);
        }
    }
    actions
}

/// Which NOTIFYs a bad-day option applies to.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Selector {
    All,
    Share(f64),
    Every(u64),
    Match(String),
}

impl FromStr for Selector {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let (kind, value) = s.split_once(':').unwrap_or((s, ""));
        match kind {
            "all" if value.is_empty() => Ok(Self::All),
            "share" => match value.parse::<f64>() {
                Ok(f) if (0.0..=1.0).contains(&f) => Ok(Self::Share(f)),
                _ => Err(format!(
                    "share:{value}: the share must be a number from 0 to 1"
                )),
            },
            "every" => match value.parse::<u64>() {
                Ok(n) if n >= 1 => Ok(Self::Every(n)),
                _ => Err(format!(
                    "every:{value}: N must be a whole number of at least 1"
                )),
            },
            "match" if !value.is_empty() => Ok(Self::Match(value.to_owned())),
            _ => Err(format!(
                "{s:?}: expected all, share:F (0 to 1), every:N or match:TEXT"
            )),
        }
    }
}

impl Selector {
    /// Whether the `n`th NOTIFY (counting from 1) is selected.
    #[allow(clippy::cast_precision_loss)] // a 53-bit hash as a fraction, exact in f64
    fn selects(&self, n: u64, req: &Request) -> bool {
        match self {
            Self::All => true,
            Self::Every(k) => n % k == 0,
            // a fixed pseudo-random sequence (Fibonacci hashing of the count): reproducible runs
            Self::Share(f) => {
                let h = n.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 11;
                (h as f64 / (1u64 << 53) as f64) < *f
            }
            Self::Match(text) => req.messages().any(|m| {
                m.args().any(|a| match a.value {
                    TypedData::String(b) | TypedData::Binary(b) => {
                        b.windows(text.len()).any(|w| w == text.as_bytes())
                    }
                    _ => false,
                })
            }),
        }
    }
}

/// How a selected NOTIFY fails.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum FailMode {
    Error,
    Panic,
}

#[derive(Debug)]
struct Injected;

impl fmt::Display for Injected {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("failure injected by spoa echo --fail error")
    }
}

impl std::error::Error for Injected {}

/// The echo handler with the bad-day options.
struct BadDay {
    scope: Scope,
    delay: Option<(Duration, Selector)>,
    fail: Option<(FailMode, Selector)>,
    count: AtomicU64,
}

impl Handler for BadDay {
    type Error = BoxError;

    fn handle_notify(
        &self,
        mut req: Request,
    ) -> impl Future<Output = Result<Actions, BoxError>> + Send {
        let n = self.count.fetch_add(1, Ordering::Relaxed) + 1;
        let delay = self
            .delay
            .as_ref()
            .and_then(|(d, sel)| sel.selects(n, &req).then_some(*d));
        let fail = self
            .fail
            .as_ref()
            .and_then(|(mode, sel)| sel.selects(n, &req).then_some(*mode));
        let scope = self.scope;
        async move {
            if let Some(d) = delay {
                tokio::time::sleep(d).await;
            }
            match fail {
                Some(FailMode::Error) => Err(Injected.into()),
                Some(FailMode::Panic) => panic!("panic injected by spoa echo --fail panic"),
                None => Ok(echo_actions(&mut req, scope)),
            }
        }
    }
}

pub(crate) async fn run(args: &EchoArgs) -> anyhow::Result<ExitCode> {
    let metrics = std::sync::Arc::new(spoa_runtime::Metrics::default());
    let mut builder = Server::builder()
        .max_frame_size(args.max_frame_size)
        .pipelining(!args.no_pipelining)
        .max_in_flight(args.max_in_flight)
        .pad_empty_ack(!args.no_pad_empty_ack)
        .max_connections(args.max_connections)
        .hello_timeout(Some(args.hello_timeout))
        .processing_timeout(args.processing_timeout)
        .lame_duck(args.lame_duck)
        .drain_quiet(args.drain_quiet)
        .error_var(Scope::Transaction, args.error_var.clone())
        .metrics(metrics.clone());
    if args.reuse_port {
        builder = builder.lame_duck_mode(LameDuck::ReleasePort);
    }
    if let Some(b) = args.handler_budget {
        builder = builder.handler_budget(b);
    }
    if args.no_error_var {
        builder = builder.no_error_var();
    }
    let server = builder
        .build()
        .map_err(|e| anyhow::anyhow!("{e} (spoa echo: see --help)"))?;
    let (signal, second) = crate::shutdown_signals()?;
    let health = Health::new();
    let stop_admin = CancellationToken::new();
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
    let listener = AnyListener::bind_with(&args.listen, args.reuse_port, &perms).await?;
    let scope = args.scope;
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
    info!(
        scope = %scope,
        max_frame_size = args.max_frame_size,
        pipelining = !args.no_pipelining,
        processing_timeout = ?args.processing_timeout,
        budget = ?server.config().handler_budget(),
        "echo agent started"
    );
    if args.delay.is_some() || args.fail.is_some() {
        let handler = BadDay {
            scope,
            delay: args.delay.map(|d| (d, args.delay_which.clone())),
            fail: args.fail.map(|m| (m, args.fail_which.clone())),
            count: AtomicU64::new(0),
        };
        info!(delay = ?args.delay, delay_which = ?args.delay_which, fail = ?args.fail, fail_which = ?args.fail_which, "bad-day options on");
        tokio::select! {
            () = serve(&server, listener, handler, shutdown) => {}
            () = second => info!("second signal: stopping now"),
        }
    } else {
        let handler = handler_fn(
            move |mut req: Request| -> Ready<Result<Actions, Infallible>> {
                std::future::ready(Ok(echo_actions(&mut req, scope)))
            },
        );
        tokio::select! {
            () = serve(&server, listener, handler, shutdown) => {}
            () = second => info!("second signal: stopping now"),
        }
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
        timeouts = m.handler_timeouts,
        errors = m.handler_errors,
        panics = m.handler_panics,
        late = m.handler_late,
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

async fn serve<H: Handler>(
    server: &Server,
    listener: AnyListener,
    handler: H,
    shutdown: impl Future<Output = ()>,
) {
    match listener {
        AnyListener::Tcp(l) => server.serve(l, handler, shutdown).await,
        AnyListener::Unix(l, _) | AnyListener::UnixInherited(l, _) => {
            server.serve(l, handler, shutdown).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use spoa_runtime::{ConnInfo, testing};

    fn req(path: &str) -> Request {
        Request::new(
            testing::notify().message("m").arg("path", path).build(),
            ConnInfo::for_tests(),
        )
    }

    #[test]
    fn selectors() {
        assert_eq!("all".parse(), Ok(Selector::All));
        assert_eq!("every:3".parse(), Ok(Selector::Every(3)));
        assert_eq!("share:0.25".parse(), Ok(Selector::Share(0.25)));
        assert_eq!("match:/slow".parse(), Ok(Selector::Match("/slow".into())));
        for bad in [
            "every:0",
            "share:2",
            "share:x",
            "match:",
            "sometimes",
            "all:1",
        ] {
            assert!(bad.parse::<Selector>().is_err(), "{bad}");
        }
        let r = req("/a/slow/b");
        assert!(Selector::Match("/slow".into()).selects(1, &r));
        assert!(!Selector::Match("/fast".into()).selects(1, &r));
        let every: Vec<u64> = (1..=9)
            .filter(|n| Selector::Every(3).selects(*n, &r))
            .collect();
        assert_eq!(every, [3, 6, 9]);
        let share = (1..=10_000)
            .filter(|n| Selector::Share(0.1).selects(*n, &r))
            .count();
        assert!((800..1200).contains(&share), "{share}");
        assert_eq!(
            (1..=100)
                .filter(|n| Selector::Share(0.0).selects(*n, &r))
                .count(),
            0
        );
    }

    #[test]
    fn names_haproxy_cannot_take_are_mapped() {
        assert_eq!(var_name("ip", 0), "ip");
        assert_eq!(var_name("", 3), "arg3");
        assert_eq!(var_name("client-ip", 0), "client_ip");
        assert_eq!(var_name("a b:c/é", 0), "a_b_c__");
        assert_eq!(var_name("x.y_Z9", 0), "x.y_Z9");
        // a valid name is borrowed, not copied
        let ok = "ok";
        assert_eq!(var_name(ok, 0).as_ptr(), ok.as_ptr());
        for n in ["client-ip", "a b", "é", "\u{0}"] {
            assert!(is_valid_var_name(&var_name(n, 0)), "{n}");
        }
    }
}
