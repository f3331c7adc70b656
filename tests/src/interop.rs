//! Support for end-to-end tests against real HAProxy processes.
//!
//! - [`haproxy`] finds the launcher of an HAProxy series (2.6, 3.0, 3.2, 3.4) written by
//!   `tools/haproxy-install`, and runs that installer once when the launcher is missing.
//! - [`AgentProcess`] runs an agent on a kernel-chosen loopback port: the `ip_reputation`
//!   example of spoa-runtime ([`AgentProcess::start`]) or any binary that prints
//!   `listening on ADDR`, such as `spoa echo` ([`AgentProcess::start_with`], [`spoa_binary`]).
//!   [`HaproxyInstance`] runs HAProxy with the templates in `tests/haproxy/`. Both are killed
//!   when dropped.
//! - [`http_get`], [`HaproxyInstance::server_stat`] and [`wait_until`] talk to them, with every
//!   wait bounded in time.
//!
//! Everything listens on and connects to 127.0.0.1 only.

use std::fmt::Write as _;
use std::fs::{self, File};
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

/// The HAProxy series `tools/haproxy-install` knows about.
pub const SERIES: [&str; 4] = ["2.6", "3.0", "3.2", "3.4"];

/// The placeholders of the templates (see tests/haproxy/README.md).
const PLACEHOLDERS: [&str; 6] = [
    "@AGENT2_SERVER@",
    "@FRONTEND_PORT@",
    "@AGENT_ADDR@",
    "@SPOE_CONF@",
    "@STATS_SOCKET@",
    "@PIPELINING@",
];

/// Startup bound for HAProxy and the agent (each).
const START_TIMEOUT: Duration = Duration::from_secs(10);
/// Connect/read/write bound for one HTTP request or stats-socket command.
const IO_TIMEOUT: Duration = Duration::from_secs(5);
/// Bound for `tools/haproxy-install` (downloads) and for building an agent binary.
const SLOW_COMMAND_TIMEOUT: Duration = Duration::from_secs(15 * 60);

/// How to install HAProxy by hand; part of every "HAProxy not available" failure.
const INSTALL_HINT: &str = "Install the HAProxy builds with `tools/haproxy-install 2.6 3.0 3.2 3.4` \
(run it from the workspace root, as root: 2.6 is Debian 12's `haproxy` package installed with \
apt-get, 3.0, 3.2 and 3.4 are Debian 13/unstable/experimental packages downloaded with apt-get \
and unpacked into \
$HAPROXY_DIR, default ~/.cache/spoa-rs/haproxy). The launchers land in \
<dir>/bin/haproxy-<series>; set HAPROXY_DIR if you keep them elsewhere.";

/// The `[WARNING]` and `[ALERT]` lines of HAProxy output, without the two that HAProxy 3.4 prints
/// whenever it runs as root without `chroot` and `user`/`uid` (tests and CI run as root; these
/// say nothing about the configuration under test, and a non-root user would not see them).
///
/// ```
/// let out = "[NOTICE] x\n[WARNING]  (1) : [haproxy.main()] HAProxy was started as root without any 'chroot' directive.\n[WARNING] (1) : parsing [a.cfg:3] : bad\n";
/// assert_eq!(spop_tests::interop::config_warnings(out), vec!["[WARNING] (1) : parsing [a.cfg:3] : bad"]);
/// ```
pub fn config_warnings(output: &str) -> Vec<&str> {
    const AS_ROOT: [&str; 2] = [
        "HAProxy was started as root without any 'chroot' directive",
        "HAProxy was started as the root user and does not make use of 'user' nor 'uid'",
    ];
    output
        .lines()
        .filter(|l| l.contains("WARNING") || l.contains("ALERT"))
        .filter(|l| !AS_ROOT.iter().any(|r| l.contains(r)))
        .collect()
}

/// `haproxy -c -f <cfg>` of HAProxy `series`, run in `dir` (relative paths in the config resolve
/// from there): whether HAProxy accepts the config, and everything it printed (stdout then
/// stderr), for [`config_warnings`] and failure messages.
pub fn haproxy_check(series: &str, cfg: &Path, dir: &Path) -> (bool, String) {
    let bin = haproxy(series);
    let out = Command::new(&bin)
        .args(["-c", "-f"])
        .arg(cfg)
        .current_dir(dir)
        .output()
        .unwrap_or_else(|e| panic!("run {}: {e}", bin.display()));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// The workspace root (the parent of this package).
pub fn workspace_root() -> PathBuf {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest.parent().unwrap_or(manifest).to_path_buf()
}

/// `tests/haproxy/` with the config templates.
pub fn templates_dir() -> PathBuf {
    workspace_root().join("tests").join("haproxy")
}

/// Where `tools/haproxy-install` puts its files: `$HAPROXY_DIR`, else
/// `~/.cache/spoa-rs/haproxy`.
pub fn haproxy_install_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("HAPROXY_DIR").filter(|d| !d.is_empty()) {
        return PathBuf::from(dir);
    }
    let home = std::env::var_os("HOME")
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| {
            panic!(
                "neither HAPROXY_DIR nor HOME is set, so the HAProxy launchers cannot be found. \
             {INSTALL_HINT}"
            )
        });
    PathBuf::from(home).join(".cache/spoa-rs/haproxy")
}

/// The launcher of HAProxy `series` ("2.6", "3.0", "3.2" or "3.4").
///
/// Looks for `<install dir>/bin/haproxy-<series>` (see [`haproxy_install_dir`]) and checks that
/// it runs that series. If not, runs `tools/haproxy-install <series>` (once per series and
/// process; parallel tests wait for it). Panics, saying how to install HAProxy, when that fails:
/// a missing HAProxy is a test failure, never a skip.
pub fn haproxy(series: &str) -> PathBuf {
    // One lock for all series: the installer shares its apt state between series.
    static RESULTS: Mutex<Vec<(String, Result<PathBuf, String>)>> = Mutex::new(Vec::new());
    let mut results = RESULTS.lock().unwrap_or_else(PoisonError::into_inner);
    let result = match results.iter().find(|(s, _)| s == series) {
        Some((_, r)) => r.clone(),
        None => {
            let r = locate_or_install(series);
            results.push((series.to_owned(), r.clone()));
            r
        }
    };
    drop(results);
    result.unwrap_or_else(|msg| panic!("{msg}"))
}

fn locate_or_install(series: &str) -> Result<PathBuf, String> {
    if !SERIES.contains(&series) {
        return Err(format!(
            "unknown HAProxy series {series:?} (known: {SERIES:?})"
        ));
    }
    let launcher = haproxy_install_dir()
        .join("bin")
        .join(format!("haproxy-{series}"));
    let first_look = check_launcher(&launcher, series);
    if first_look.is_ok() {
        return Ok(launcher);
    }

    let installer = workspace_root().join("tools").join("haproxy-install");
    eprintln!(
        "HAProxy {series} not usable at {} ({}); running {} {series}",
        launcher.display(),
        first_look.as_ref().unwrap_err(),
        installer.display()
    );
    let mut cmd = Command::new(&installer);
    cmd.arg(series).current_dir(workspace_root());
    let fail = |what: String| {
        format!(
            "HAProxy {series} is required by the interop tests but is not available.\n\
             - looked for the launcher {}: {}\n\
             - tried to install it with `{} {series}`: {what}\n\
             {INSTALL_HINT}",
            launcher.display(),
            first_look.as_ref().unwrap_err(),
            installer.display(),
        )
    };
    let out = run_bounded(&mut cmd, SLOW_COMMAND_TIMEOUT).map_err(|e| fail(e.to_string()))?;
    if !out.status.success() {
        return Err(fail(format!(
            "it failed ({}):\n{}{}",
            out.status, out.stdout, out.stderr
        )));
    }
    // The installer prints one launcher path per series on stdout.
    let printed = out
        .stdout
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .map(|l| PathBuf::from(l.trim()))
        .unwrap_or_else(|| launcher.clone());
    check_launcher(&printed, series)
        .map_err(|e| fail(format!("it succeeded but {}: {e}", printed.display())))?;
    Ok(printed)
}

/// `launcher -v` must run and report `version <series>.`.
fn check_launcher(launcher: &Path, series: &str) -> Result<(), String> {
    if !launcher.exists() {
        return Err("no such file".into());
    }
    let out = run_bounded(Command::new(launcher).arg("-v"), START_TIMEOUT)
        .map_err(|e| format!("cannot run it: {e}"))?;
    let text = format!("{}{}", out.stdout, out.stderr);
    if out.status.success() && text.contains(&format!("version {series}.")) {
        Ok(())
    } else {
        let first = text.lines().next().unwrap_or("");
        Err(format!(
            "`-v` did not report version {series}.x ({}): {first}",
            out.status
        ))
    }
}

/// Output of [`run_bounded`].
#[derive(Debug)]
struct Output {
    status: ExitStatus,
    stdout: String,
    stderr: String,
}

/// Runs `cmd` to completion with stdout/stderr captured; kills it after `timeout`.
fn run_bounded(cmd: &mut Command, timeout: Duration) -> io::Result<Output> {
    let dir = TempDir::new("cmd");
    let out_path = dir.path().join("stdout");
    let err_path = dir.path().join("stderr");
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(File::create(&out_path)?)
        .stderr(File::create(&err_path)?)
        .spawn()?;
    let start = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if start.elapsed() > timeout {
            let _ = child.kill();
            let _ = child.wait();
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!(
                    "{cmd:?} did not finish within {timeout:?}; output so far:\n{}{}",
                    read_lossy(&out_path),
                    read_lossy(&err_path)
                ),
            ));
        }
        thread::sleep(Duration::from_millis(20));
    };
    Ok(Output {
        status,
        stdout: read_lossy(&out_path),
        stderr: read_lossy(&err_path),
    })
}

fn read_lossy(path: &Path) -> String {
    fs::read(path)
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default()
}

/// A currently free TCP port on 127.0.0.1 (bound, then released).
///
/// Another process may take it before it is used; [`HaproxyInstance::start`] retries with a
/// new port when its bind fails.
pub fn free_port() -> u16 {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|l| l.local_addr())
        .expect("bind 127.0.0.1:0")
        .port()
}

/// Calls `probe` every 50 ms until it returns `Some`, for at most `timeout`.
pub fn wait_until<T>(timeout: Duration, probe: impl FnMut() -> Option<T>) -> Option<T> {
    poll_every(Duration::from_millis(50), timeout, probe)
}

/// Calls `probe` every `interval` until it returns `Some`, for at most `timeout`.
pub fn poll_every<T>(
    interval: Duration,
    timeout: Duration,
    mut probe: impl FnMut() -> Option<T>,
) -> Option<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = probe() {
            return Some(v);
        }
        if Instant::now() >= deadline {
            return None;
        }
        thread::sleep(interval);
    }
}

/// A directory under the system temp dir, unique per process and call; removed on drop
/// unless the thread is panicking (then its logs stay for inspection).
#[derive(Debug)]
pub struct TempDir(PathBuf);

impl TempDir {
    /// Creates `$TMPDIR/spop-tests-<pid>-<n>-<tag>`.
    pub fn new(tag: &str) -> Self {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let tag: String = tag
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
            .take(24)
            .collect();
        let mut base = std::env::temp_dir();
        // The stats socket lives in here: keep the path well below sun_path's 108 bytes.
        if base.as_os_str().len() > 50 {
            base = PathBuf::from("/tmp");
        }
        let path = base.join(format!("spop-tests-{}-{n}-{tag}", std::process::id()));
        let _ = fs::remove_dir_all(&path);
        fs::create_dir_all(&path)
            .unwrap_or_else(|e| panic!("create temp dir {}: {e}", path.display()));
        Self(path)
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if !thread::panicking() {
            let _ = fs::remove_dir_all(&self.0);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Agent binaries
// ---------------------------------------------------------------------------------------------

/// Path of the `ip_reputation` example binary, built if needed (once per process).
///
/// Under cargo (`CARGO` is set for tests) this runs
/// `$CARGO build -p spoa-runtime --example ip_reputation` into the test's own target dir and
/// profile: a no-op when `cargo test --workspace` already built it, and it keeps
/// `cargo test -p spop-tests` from running a stale agent. Without cargo, the binary next to
/// the test executable (`target/<profile>/examples/ip_reputation`) is used.
pub fn agent_binary() -> PathBuf {
    static BIN: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    BIN.get_or_init(|| find_or_build(&Artifact::Example("spoa-runtime", "ip_reputation")))
        .clone()
        .unwrap_or_else(|msg| panic!("{msg}"))
}

/// Path of the `bot_guard` example binary of spoa-runtime, built if needed (once per
/// process), like [`agent_binary`].
pub fn bot_guard_binary() -> PathBuf {
    static BIN: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    BIN.get_or_init(|| find_or_build(&Artifact::Example("spoa-runtime", "bot_guard")))
        .clone()
        .unwrap_or_else(|msg| panic!("{msg}"))
}

/// Path of the `spoa` command line tool (package spoa-cli), built if needed (once per process).
///
/// Like [`agent_binary`]: under cargo this runs `$CARGO build -p spoa-cli --bin spoa` into the
/// test's own target dir and profile (`target/<profile>/spoa`); without cargo, the binary next
/// to the test executable is used.
pub fn spoa_binary() -> PathBuf {
    static BIN: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    BIN.get_or_init(|| find_or_build(&Artifact::Bin("spoa-cli", "spoa")))
        .clone()
        .unwrap_or_else(|msg| panic!("{msg}"))
}

/// A binary of a workspace package: `(package, name)`.
enum Artifact {
    /// `cargo build -p <package> --example <name>` -> `<profile dir>/examples/<name>`.
    Example(&'static str, &'static str),
    /// `cargo build -p <package> --bin <name>` -> `<profile dir>/<name>`.
    Bin(&'static str, &'static str),
}

impl Artifact {
    fn package(&self) -> &'static str {
        match self {
            Self::Example(p, _) | Self::Bin(p, _) => p,
        }
    }

    fn name(&self) -> &'static str {
        match self {
            Self::Example(_, n) | Self::Bin(_, n) => n,
        }
    }

    /// `--example` or `--bin`.
    fn kind_flag(&self) -> &'static str {
        match self {
            Self::Example(..) => "--example",
            Self::Bin(..) => "--bin",
        }
    }

    /// Where cargo puts it under a profile dir such as `target/debug`.
    fn path_in(&self, profile_dir: &Path) -> PathBuf {
        match self {
            Self::Example(_, n) => profile_dir.join("examples").join(n),
            Self::Bin(_, n) => profile_dir.join(n),
        }
    }
}

fn find_or_build(artifact: &Artifact) -> Result<PathBuf, String> {
    let (package, name, flag) = (artifact.package(), artifact.name(), artifact.kind_flag());
    let exe = std::env::current_exe().map_err(|e| format!("current_exe: {e}"))?;
    // <target-dir>/[<triple>/]<profile-dir>/deps/<test>-<hash>
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .ok_or_else(|| format!("unexpected test executable path {}", exe.display()))?;
    let beside = artifact.path_in(profile_dir);

    let Some(cargo) = std::env::var_os("CARGO") else {
        return if beside.exists() {
            Ok(beside)
        } else {
            Err(format!(
                "{} is missing and CARGO is not set to build it; run \
                 `cargo build -p {package} {flag} {name}` or `cargo test --workspace`",
                beside.display()
            ))
        };
    };
    let profile_name = profile_dir
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("debug");
    let profile = match profile_name {
        "debug" => "dev",
        other => other,
    };
    // The target dir is the ancestor cargo tagged with CACHEDIR.TAG (skips a <triple>/ level).
    let target_dir = profile_dir
        .ancestors()
        .skip(1)
        .find(|d| d.join("CACHEDIR.TAG").exists())
        .unwrap_or_else(|| profile_dir.parent().unwrap_or(profile_dir));
    let built = artifact.path_in(&target_dir.join(profile_name));

    let mut cmd = Command::new(&cargo);
    cmd.args(["build", "--quiet", "-p", package, flag, name])
        .arg("--profile")
        .arg(profile)
        .arg("--target-dir")
        .arg(target_dir)
        .current_dir(workspace_root());
    let out = run_bounded(&mut cmd, SLOW_COMMAND_TIMEOUT)
        .map_err(|e| format!("building {name} ({cmd:?}): {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "building {name} failed ({}): {cmd:?}\n{}{}",
            out.status, out.stdout, out.stderr
        ));
    }
    if built.exists() {
        Ok(built)
    } else {
        Err(format!(
            "{cmd:?} succeeded but {} does not exist",
            built.display()
        ))
    }
}

/// The `capabilities=` of each spoa-runtime "handshake done" line of `agent_log`.
fn negotiated_capabilities(agent_log: &str) -> Vec<String> {
    agent_log
        .lines()
        .filter(|l| l.contains("handshake done"))
        .map(|l| {
            l.split_once("capabilities=")
                .map_or("?", |(_, c)| c.split_whitespace().next().unwrap_or(""))
                .to_owned()
        })
        .collect()
}

/// Strips ANSI escape sequences (`ESC [ ... letter`) from a log line.
fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// Copies lines from `r` into `log`, ANSI escapes stripped, while `log` is shorter than
/// `log_limit` bytes; sends the address of a "listening on <addr>" line.
fn pump(
    r: impl Read + Send + 'static,
    log: Arc<Mutex<String>>,
    listening: Option<mpsc::Sender<SocketAddr>>,
    log_limit: usize,
) -> JoinHandle<()> {
    thread::spawn(move || {
        let mut r = BufReader::new(r);
        let mut buf = Vec::new();
        loop {
            buf.clear();
            match r.read_until(b'\n', &mut buf) {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
            let line = strip_ansi(String::from_utf8_lossy(&buf).trim_end());
            if let Some(tx) = &listening {
                let addr = line
                    .rsplit_once("listening on ")
                    .map(|(_, a)| a.trim().parse());
                if let Some(Ok(addr)) = addr {
                    let _ = tx.send(addr);
                }
            }
            let mut log = log.lock().unwrap_or_else(PoisonError::into_inner);
            if log.len() < log_limit {
                log.push_str(&line);
                log.push('\n');
            }
        }
    })
}

/// An agent running as a child process on `127.0.0.1:<kernel port>`, with `NO_COLOR=1` (and
/// `RUST_LOG=debug` unless started by [`Self::spawn`] with another filter); killed on drop.
/// Its stdout and stderr are collected for [`Self::log`].
#[derive(Debug)]
pub struct AgentProcess {
    child: Child,
    addr: SocketAddr,
    log: Arc<Mutex<String>>,
    pumps: Vec<JoinHandle<()>>,
}

impl AgentProcess {
    /// Starts the `ip_reputation` example ([`agent_binary`]) on `127.0.0.1:0` and waits (at
    /// most 10 s) until it reports its listening address.
    pub fn start() -> Self {
        Self::start_with(&agent_binary(), &["127.0.0.1:0"])
    }

    /// Starts `bin args...` and waits (at most 10 s) until it prints `listening on <addr>` to
    /// stderr, e.g. `start_with(&spoa_binary(), &["echo", "--listen", "127.0.0.1:0"])`.
    /// Panics with the process's output if it does not.
    pub fn start_with(bin: &Path, args: &[&str]) -> Self {
        Self::spawn(
            Command::new(bin).args(args).env("RUST_LOG", "debug"),
            &format!("the agent {} {args:?}", bin.display()),
            usize::MAX,
        )
    }

    /// Spawns `cmd` with `NO_COLOR=1`, stdin from `/dev/null` and its stdout and stderr
    /// collected for [`Self::log`] (while the log is shorter than `log_limit` bytes), and waits
    /// (at most 10 s) until it prints `listening on <addr>` to stderr. Panics with the
    /// process's output if it does not; `what` names the process in panic messages.
    pub fn spawn(cmd: &mut Command, what: &str, log_limit: usize) -> Self {
        let mut child = cmd
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("start {what}: {e}"));
        let log = Arc::new(Mutex::new(String::new()));
        let (tx, rx) = mpsc::channel();
        let pumps = vec![
            pump(
                child.stdout.take().expect("piped"),
                Arc::clone(&log),
                None,
                log_limit,
            ),
            pump(
                child.stderr.take().expect("piped"),
                Arc::clone(&log),
                Some(tx),
                log_limit,
            ),
        ];
        let addr = rx.recv_timeout(START_TIMEOUT);
        let mut agent = Self {
            child,
            addr: SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
            log,
            pumps,
        };
        match addr {
            Ok(addr) => agent.addr = addr,
            Err(_) => {
                let status = agent.child.try_wait().ok().flatten();
                panic!(
                    "{what} did not report a listening address within {START_TIMEOUT:?} \
                     (exit status: {status:?}); its log:\n{}",
                    agent.log()
                );
            }
        }
        agent
    }

    /// The address the agent listens on.
    pub const fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Its pid.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// `Ok` while the process runs; else how it ended, with its log.
    pub fn alive(&mut self) -> Result<(), String> {
        match self.child.try_wait() {
            Ok(None) => Ok(()),
            Ok(Some(status)) => Err(format!(
                "the agent process exited ({status}); its log:\n{}",
                self.log()
            )),
            Err(e) => Err(format!("cannot check the agent process: {e}")),
        }
    }

    /// Everything the agent wrote to stdout and stderr so far.
    pub fn log(&self) -> String {
        self.log
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// The `capabilities=` of every "handshake done" line spoa-runtime logged so far (one per
    /// HELLO that was not a health check), e.g. `"pipelining"` or `""`.
    pub fn negotiated_capabilities(&self) -> Vec<String> {
        negotiated_capabilities(&self.log())
    }

    /// The process's exit status, if it has exited.
    pub fn exit_status(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().ok().flatten()
    }
}

impl Drop for AgentProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        for p in self.pumps.drain(..) {
            let _ = p.join();
        }
    }
}

// ---------------------------------------------------------------------------------------------
// HAProxy
// ---------------------------------------------------------------------------------------------

/// What to render from the templates in `tests/haproxy/`.
#[derive(Debug, Clone)]
pub struct HaproxyConfig {
    /// File name of the main config template, e.g. `haproxy.cfg.in`.
    pub cfg_template: &'static str,
    /// File name of the SPOE config template, e.g. `spoe.conf.in`.
    pub spoe_template: &'static str,
    /// Address of the agent (`@AGENT_ADDR@`).
    pub agent_addr: SocketAddr,
    /// `option pipelining` or `no option pipelining` (`@PIPELINING@`).
    pub pipelining: bool,
    /// A second agent server (`@AGENT2_SERVER@`, in templates that have it).
    pub agent2_addr: Option<SocketAddr>,
}

impl HaproxyConfig {
    /// The IP-reputation scenario: `haproxy.cfg.in` + `spoe.conf.in`.
    pub fn iprep(agent_addr: SocketAddr, pipelining: bool) -> Self {
        Self {
            cfg_template: "haproxy.cfg.in",
            spoe_template: "spoe.conf.in",
            agent_addr,
            pipelining,
            agent2_addr: None,
        }
    }

    /// The bot-guard scenario: `haproxy-botguard.cfg.in` + `spoe-botguard.conf.in`, the
    /// shipped `spoa-runtime/examples/bot_guard/` config plus two engines that send the
    /// `hdrs` argument as NULL (paths under `/_null/`) or not at all (`/_absent/`).
    pub fn bot_guard(agent_addr: SocketAddr, pipelining: bool) -> Self {
        Self {
            cfg_template: "haproxy-botguard.cfg.in",
            spoe_template: "spoe-botguard.conf.in",
            agent_addr,
            pipelining,
            agent2_addr: None,
        }
    }

    /// The echo scenario: `haproxy-echo.cfg.in` + `spoe-echo.conf.in`. Message `echo` sends
    /// `ip=src str=path n=int(-7)`; the reply body is
    /// `ip=%[var(txn.echo.ip)] str=%[var(txn.echo.str)] n=%[var(txn.echo.n)]\n`.
    pub fn echo(agent_addr: SocketAddr, pipelining: bool) -> Self {
        Self {
            cfg_template: "haproxy-echo.cfg.in",
            spoe_template: "spoe-echo.conf.in",
            agent_addr,
            pipelining,
            agent2_addr: None,
        }
    }
}

impl HaproxyConfig {
    /// The brownout scenario: `haproxy-brownout.cfg.in` + `spoe-brownout.conf.in`. Message
    /// `check` sends `path=path` under `timeout processing 500ms`; the reply body is
    /// `path=<txn.bo.path> agent_error=<txn.bo.spoa_error> spoe_error=<txn.bo.error>\n`.
    pub fn brownout(agent_addr: SocketAddr, pipelining: bool) -> Self {
        Self {
            cfg_template: "haproxy-brownout.cfg.in",
            spoe_template: "spoe-brownout.conf.in",
            agent_addr,
            pipelining,
            agent2_addr: None,
        }
    }
}

impl HaproxyConfig {
    /// The restart scenario: `haproxy-restart.cfg.in` + `spoe-restart.conf.in`, one server
    /// `agent` (and `agent2` if given) in backend `be_agent` with `balance roundrobin` and
    /// `check inter 1s fall 2 rise 2`; message `check` sends `path=path`; the reply body is
    /// `path=<txn.rr.path> spoe_error=<txn.rr.error>\n`. Pipelining on.
    pub fn restart(agent_addr: SocketAddr, agent2_addr: Option<SocketAddr>) -> Self {
        Self {
            cfg_template: "haproxy-restart.cfg.in",
            spoe_template: "spoe-restart.conf.in",
            agent_addr,
            pipelining: true,
            agent2_addr,
        }
    }
}

/// One server line of `show stat`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerStat {
    /// Column `status`: `UP`, `DOWN`, `no check`, ...
    pub status: String,
    /// Column `check_status`: `L7OK`, `L4CON`, `INI`, ... (with a leading `* ` while a check
    /// runs).
    pub check_status: String,
    /// The whole CSV line, for failure messages.
    pub line: String,
}

impl ServerStat {
    /// `check_status` without the in-progress marker.
    pub fn check(&self) -> &str {
        self.check_status.trim_start_matches("* ")
    }
}

/// A running `haproxy -db -f <rendered config>`; killed on drop.
#[derive(Debug)]
pub struct HaproxyInstance {
    child: Child,
    series: String,
    port: u16,
    stats_socket: PathBuf,
    config: String,
    stdout_path: PathBuf,
    stderr_path: PathBuf,
    // last: the directory goes after the process is gone
    dir: TempDir,
}

/// Why a start attempt failed.
enum StartError {
    /// The frontend port was taken in the meantime: try another one.
    PortTaken(String),
    Fatal(String),
}

impl HaproxyInstance {
    /// Renders `cfg` into a fresh temp dir, starts HAProxy `series` in the foreground and
    /// waits (at most 10 s) until it runs: the stats socket answers, which HAProxy does only
    /// once every listener, the frontend included, is bound. Retries with another port when
    /// the frontend port was taken in the meantime.
    pub fn start(series: &str, cfg: &HaproxyConfig) -> Self {
        let bin = haproxy(series);
        let dir = TempDir::new(&format!("haproxy-{series}"));
        let mut attempt = 0;
        loop {
            attempt += 1;
            match Self::try_start(&bin, cfg, &dir) {
                Ok((child, port, config)) => {
                    return Self {
                        child,
                        series: series.to_owned(),
                        port,
                        stats_socket: dir.path().join("stats.sock"),
                        config,
                        stdout_path: dir.path().join("haproxy.stdout"),
                        stderr_path: dir.path().join("haproxy.stderr"),
                        dir,
                    };
                }
                Err(StartError::PortTaken(why)) if attempt < 5 => {
                    eprintln!("HAProxy {series}: port taken, retrying: {why}");
                }
                Err(StartError::PortTaken(msg) | StartError::Fatal(msg)) => {
                    panic!("HAProxy {series} ({}) did not start: {msg}", bin.display())
                }
            }
        }
    }

    fn try_start(
        bin: &Path,
        cfg: &HaproxyConfig,
        dir: &TempDir,
    ) -> Result<(Child, u16, String), StartError> {
        let port = free_port();
        let d = dir.path();
        let spoe_path = d.join("spoe.conf");
        let cfg_path = d.join("haproxy.cfg");
        let stats = d.join("stats.sock");
        let pipelining = if cfg.pipelining {
            "option pipelining"
        } else {
            "no option pipelining"
        };
        let read_template = |name: &str| {
            let p = templates_dir().join(name);
            fs::read_to_string(&p).unwrap_or_else(|e| panic!("read template {}: {e}", p.display()))
        };
        let spoe = read_template(cfg.spoe_template).replace("@PIPELINING@", pipelining);
        let config = read_template(cfg.cfg_template)
            .replace("@FRONTEND_PORT@", &port.to_string())
            .replace("@AGENT_ADDR@", &cfg.agent_addr.to_string())
            .replace(
                "@AGENT2_SERVER@",
                &cfg.agent2_addr.map_or_else(String::new, |a| {
                    format!("server agent2 {a} check inter 1s fall 2 rise 2")
                }),
            )
            .replace("@SPOE_CONF@", &spoe_path.display().to_string())
            .replace("@STATS_SOCKET@", &stats.display().to_string());
        for (text, name) in [(&spoe, cfg.spoe_template), (&config, cfg.cfg_template)] {
            for placeholder in PLACEHOLDERS {
                assert!(
                    !text.contains(placeholder),
                    "{placeholder} left in the rendered {name}"
                );
            }
        }
        let write = |p: &Path, text: &str| {
            fs::write(p, text).unwrap_or_else(|e| panic!("write {}: {e}", p.display()))
        };
        write(&spoe_path, &spoe);
        write(&cfg_path, &config);
        let _ = fs::remove_file(&stats);
        let stdout_path = d.join("haproxy.stdout");
        let stderr_path = d.join("haproxy.stderr");
        let create =
            |p: &Path| File::create(p).unwrap_or_else(|e| panic!("create {}: {e}", p.display()));
        let mut child = Command::new(bin)
            .arg("-db")
            .arg("-f")
            .arg(&cfg_path)
            .current_dir(d)
            .stdin(Stdio::null())
            .stdout(create(&stdout_path))
            .stderr(create(&stderr_path))
            .spawn()
            .map_err(|e| StartError::Fatal(format!("spawn: {e}")))?;

        let logs = || {
            format!(
                "\n--- stderr ---\n{}\n--- stdout ---\n{}\n--- haproxy.cfg ---\n{config}",
                read_lossy(&stderr_path),
                read_lossy(&stdout_path)
            )
        };
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                let err = read_lossy(&stderr_path);
                return Err(
                    if err.contains("cannot bind socket") || err.contains("Address already in use")
                    {
                        StartError::PortTaken(format!("exit {status}: {err}"))
                    } else {
                        StartError::Fatal(format!("it exited with {status}{}", logs()))
                    },
                );
            }
            // HAProxy binds every listener (or exits) before it serves the runtime API, so an
            // answer on the stats socket means the frontend accepts connections. (Probing the
            // frontend with a bare connect would log a `<BADREQ>` line per probe.)
            if stats_command(&stats, "show info").is_ok_and(|s| s.contains("Pid:")) {
                if let Ok(None) = child.try_wait() {
                    return Ok((child, port, config));
                }
                continue;
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                return Err(StartError::Fatal(format!(
                    "not ready within {START_TIMEOUT:?}{}",
                    logs()
                )));
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// The HAProxy series this instance runs.
    pub fn series(&self) -> &str {
        &self.series
    }

    /// The frontend port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The temp dir with the rendered configs and the logs.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// `GET <path>` against the frontend.
    pub fn get(&self, path: &str) -> io::Result<HttpResponse> {
        http_get(self.port, path)
    }

    /// Sends one runtime-API command to the stats socket and returns the answer.
    pub fn stats(&self, command: &str) -> io::Result<String> {
        stats_command(&self.stats_socket, command)
    }

    /// How many log lines HAProxy dropped (`DroppedLogs` of `show info`): under a burst it
    /// drops lines it cannot write at once rather than wait, so a test counting log lines
    /// accounts for these.
    pub fn dropped_logs(&self) -> io::Result<usize> {
        let info = self.stats("show info")?;
        info.lines()
            .find_map(|l| l.strip_prefix("DroppedLogs:"))
            .and_then(|v| v.trim().parse().ok())
            .ok_or_else(|| io::Error::other(format!("no DroppedLogs in show info: {info}")))
    }

    /// Waits at most `timeout` until the SPOE log lines of `agents` and the log lines HAProxy
    /// says it dropped ([`Self::dropped_logs`]) account for `total` requests; returns the
    /// lines and the dropped count (None if they never did). Every request logs one SPOE
    /// line, so `lines.len() + dropped >= total` with `lines.len() <= total`.
    pub fn wait_spoe_log(
        &self,
        agents: &[&str],
        total: usize,
        timeout: Duration,
    ) -> Option<(Vec<SpoeLogLine>, usize)> {
        let found = wait_until(timeout, || {
            let lines: Vec<_> = agents.iter().flat_map(|a| self.spoe_log_lines(a)).collect();
            let dropped = self.dropped_logs().unwrap_or(0);
            (lines.len() + dropped >= total).then_some((lines, dropped))
        });
        if let Some((_, dropped)) = found.as_ref().filter(|(_, d)| *d > 0) {
            eprintln!("HAProxy dropped {dropped} log lines ({total} requests)");
        }
        found.filter(|(lines, _)| lines.len() <= total)
    }

    /// The `show stat` line of `backend/server`, if present.
    pub fn server_stat(&self, backend: &str, server: &str) -> io::Result<Option<ServerStat>> {
        let csv = self.stats("show stat")?;
        parse_server_stat(&csv, backend, server)
    }

    /// Polls [`Self::server_stat`] until `want` accepts the state of `backend/server`, for at
    /// most `timeout`. The error carries the last answer.
    pub fn wait_for_server(
        &self,
        backend: &str,
        server: &str,
        timeout: Duration,
        want: impl Fn(&ServerStat) -> bool,
    ) -> Result<ServerStat, String> {
        let mut last = String::from("(no answer yet)");
        wait_until(timeout, || match self.server_stat(backend, server) {
            Ok(Some(st)) if want(&st) => Some(st),
            other => {
                last = format!("{other:?}");
                None
            }
        })
        .ok_or_else(|| format!("last show stat of {backend}/{server}: {last}"))
    }

    /// The SPOE lines HAProxy logged so far for the agent `spoe_agent` (the `spoe-agent`
    /// section name, e.g. `echo-agent`).
    pub fn spoe_log_lines(&self, spoe_agent: &str) -> Vec<SpoeLogLine> {
        parse_spoe_log_lines(&self.stdout_log(), spoe_agent)
    }

    /// What HAProxy wrote to stderr (warnings and alerts).
    pub fn stderr_log(&self) -> String {
        read_lossy(&self.stderr_path)
    }

    /// What HAProxy wrote to stdout (its log: `log stdout`).
    pub fn stdout_log(&self) -> String {
        read_lossy(&self.stdout_path)
    }

    /// The process's exit status, if it has exited.
    pub fn exit_status(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// Logs and config, for failure messages.
    pub fn diagnostics(&self) -> String {
        let mut s = String::new();
        let _ = write!(
            s,
            "--- HAProxy {} stderr ({}) ---\n{}\n--- HAProxy {} stdout (log) ---\n{}\n\
             --- rendered haproxy.cfg ---\n{}",
            self.series,
            self.dir.path().display(),
            self.stderr_log(),
            self.series,
            self.stdout_log(),
            self.config
        );
        s
    }
}

impl Drop for HaproxyInstance {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One `SPOE: [<agent>] <EVENT:...> sid=.. st=<status> <timings> ...` line of HAProxy's log.
#[derive(Debug, Clone)]
pub struct SpoeLogLine {
    /// `st=`: 0 on success, 1 for a processing timeout, ...
    pub status: String,
    /// 2.6/3.0: `t_request/t_queue/t_waiting/t_response/t_process`; 3.2: one number.
    pub timings: String,
    /// The whole line.
    pub line: String,
}

impl SpoeLogLine {
    /// A processing timeout (`st=1`) of a message that never left HAProxy's sending queue
    /// (`t_queue` and `t_waiting` are -1): the agent never saw it.
    pub fn never_sent_timeout(&self) -> bool {
        let t: Vec<&str> = self.timings.split('/').collect();
        self.status == "1" && t.len() == 5 && t[1] == "-1" && t[2] == "-1"
    }
}

/// The `SPOE: [<spoe_agent>]` lines of an HAProxy log.
pub fn parse_spoe_log_lines(log: &str, spoe_agent: &str) -> Vec<SpoeLogLine> {
    let prefix = format!("SPOE: [{spoe_agent}]");
    log.lines()
        .filter(|l| l.starts_with(&prefix))
        .map(|l| {
            let mut words = l.split_whitespace().skip_while(|w| !w.starts_with("st="));
            SpoeLogLine {
                status: words
                    .next()
                    .and_then(|w| w.strip_prefix("st="))
                    .unwrap_or("?")
                    .to_owned(),
                timings: words.next().unwrap_or("").to_owned(),
                line: l.to_owned(),
            }
        })
        .collect()
}

/// Sends `command` + `\n` to the HAProxy runtime API at `socket` and reads until EOF.
pub fn stats_command(socket: &Path, command: &str) -> io::Result<String> {
    let mut s = UnixStream::connect(socket)?;
    s.set_read_timeout(Some(IO_TIMEOUT))?;
    s.set_write_timeout(Some(IO_TIMEOUT))?;
    s.write_all(command.as_bytes())?;
    s.write_all(b"\n")?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    Ok(out)
}

/// Finds `backend/server` in `show stat` CSV output.
pub fn parse_server_stat(csv: &str, backend: &str, server: &str) -> io::Result<Option<ServerStat>> {
    let bad = |what: &str| io::Error::new(io::ErrorKind::InvalidData, format!("{what}: {csv:?}"));
    let mut lines = csv.lines();
    let header = lines
        .next()
        .and_then(|h| h.strip_prefix("# "))
        .ok_or_else(|| bad("no '# ' header line in show stat"))?;
    let cols: Vec<&str> = header.split(',').collect();
    let col = |name: &str| {
        cols.iter()
            .position(|c| *c == name)
            .ok_or_else(|| bad(&format!("no column {name}")))
    };
    let (pxname, svname, status, check) = (
        col("pxname")?,
        col("svname")?,
        col("status")?,
        col("check_status")?,
    );
    for line in lines {
        let f: Vec<&str> = line.split(',').collect();
        if f.get(pxname) == Some(&backend) && f.get(svname) == Some(&server) {
            return Ok(Some(ServerStat {
                status: f.get(status).unwrap_or(&"").to_string(),
                check_status: f.get(check).unwrap_or(&"").to_string(),
                line: line.to_owned(),
            }));
        }
    }
    Ok(None)
}

// ---------------------------------------------------------------------------------------------
// HTTP
// ---------------------------------------------------------------------------------------------

/// A parsed HTTP/1.x response.
#[derive(Debug, Clone)]
pub struct HttpResponse {
    /// Status code.
    pub status: u16,
    /// Header fields in order.
    pub headers: Vec<(String, String)>,
    /// The body (read until EOF).
    pub body: String,
}

impl HttpResponse {
    /// The first header named `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// `GET <path> HTTP/1.0` to `127.0.0.1:<port>`, reading the response until EOF; each step is
/// bounded by 5 s.
pub fn http_get(port: u16, path: &str) -> io::Result<HttpResponse> {
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let mut s = TcpStream::connect_timeout(&addr, IO_TIMEOUT)?;
    s.set_read_timeout(Some(IO_TIMEOUT))?;
    s.set_write_timeout(Some(IO_TIMEOUT))?;
    s.set_nodelay(true)?;
    // One write: several small ones would meet Nagle + delayed ACK (40 ms per request).
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").as_bytes())?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)?;
    parse_http_response(&raw)
}

fn parse_http_response(raw: &[u8]) -> io::Result<HttpResponse> {
    let text = String::from_utf8_lossy(raw);
    let bad = || {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("malformed HTTP response: {text:?}"),
        )
    };
    let (head, body) = text.split_once("\r\n\r\n").ok_or_else(bad)?;
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|c| c.parse().ok())
        .ok_or_else(bad)?;
    let headers = lines
        .map(|l| {
            l.split_once(':')
                .map(|(n, v)| (n.trim().to_owned(), v.trim().to_owned()))
                .ok_or_else(bad)
        })
        .collect::<io::Result<_>>()?;
    Ok(HttpResponse {
        status,
        headers,
        body: body.to_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_show_stat() {
        let csv = "# pxname,svname,qcur,status,check_status,x\n\
                   fe,FRONTEND,,OPEN,,\n\
                   be_agent,agent,0,UP,L7OK,1\n\
                   be_agent,BACKEND,0,UP,,\n";
        let s = parse_server_stat(csv, "be_agent", "agent")
            .unwrap()
            .unwrap();
        assert_eq!((s.status.as_str(), s.check()), ("UP", "L7OK"));
        assert!(
            parse_server_stat(csv, "be_agent", "nope")
                .unwrap()
                .is_none()
        );
        assert!(parse_server_stat("garbage", "a", "b").is_err());
    }

    #[test]
    fn parses_http_response() {
        let r = parse_http_response(
            b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\nX-SPOE-Error: 2\r\n\r\nscore=\n",
        )
        .unwrap();
        assert_eq!(r.status, 200);
        assert_eq!(r.header("x-spoe-error"), Some("2"));
        assert_eq!(r.body, "score=\n");
        assert!(parse_http_response(b"nonsense").is_err());
    }

    #[test]
    fn strips_ansi() {
        assert_eq!(strip_ansi("\u{1b}[2mtime\u{1b}[0m DEBUG x"), "time DEBUG x");
    }
}
