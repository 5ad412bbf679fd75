//! A PostgreSQL cluster of the suite's own, in a temporary directory on a free port, for the faults that
//! stop, crash or freeze the server. Never the shared server on 5432.
//!
//! `initdb` and `pg_ctl` run as the `postgres` OS user when the suite runs as root (Postgres refuses to
//! run as root). Every command is bounded (`pg_ctl -t`, and a timeout around each process); the cluster
//! is stopped and removed on drop, thawed first if it is frozen.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use sqlx::Connection;

/// The longest any `initdb` / `pg_ctl` / `kill` call may take.
const COMMAND_DEADLINE: Duration = Duration::from_secs(60);
/// What `pg_ctl -w` waits for at most, in seconds.
const PG_CTL_WAIT_SECS: &str = "30";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopMode {
    /// `pg_ctl stop -m fast`: sessions are terminated, open transactions roll back, a clean shutdown.
    Fast,
    /// `pg_ctl stop -m immediate`: every process quits at once; the next start runs crash recovery.
    Immediate,
}

impl StopMode {
    fn as_str(self) -> &'static str {
        match self {
            StopMode::Fast => "fast",
            StopMode::Immediate => "immediate",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum State {
    Running,
    Stopped,
    /// SIGSTOPped: these processes, postmaster first.
    Frozen(Vec<u32>),
}

pub struct Postgres {
    /// Holds `data/`, the server log and the Unix socket; owned by `postgres` when we are root.
    dir: tempfile::TempDir,
    port: u16,
    bin: PathBuf,
    as_postgres_user: bool,
    state: State,
    /// `-c name=value` settings beyond the suite's own (see [`Postgres::start_new_with`]).
    settings: Vec<String>,
}

/// What [`Postgres::start_new_with`] adds to a cluster: files in its directory (owned by the server's
/// user, mode 0600, as Postgres wants a key file) and settings, where `{dir}` stands for that directory.
#[derive(Debug, Clone, Default)]
pub struct Extra {
    pub files: Vec<(String, String)>,
    pub settings: Vec<(String, String)>,
}

/// Where the Postgres binaries are: `FAULTS_PG_BIN`, else the Debian path of version 15, else `pg_config`.
fn bin_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("FAULTS_PG_BIN") {
        return PathBuf::from(dir);
    }
    let debian = PathBuf::from("/usr/lib/postgresql/15/bin");
    if debian.join("pg_ctl").exists() {
        return debian;
    }
    let out = std::process::Command::new("pg_config")
        .arg("--bindir")
        .output()
        .expect("Postgres binaries: set FAULTS_PG_BIN, or install pg_config");
    PathBuf::from(String::from_utf8_lossy(&out.stdout).trim())
}

fn running_as_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(1).map(|u| u == "0"))
        })
        .unwrap_or(false)
}

/// A port nobody listens on right now (the kernel picks it).
pub fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

/// Runs `cmd` to completion within [`COMMAND_DEADLINE`]; panics with its output on failure.
async fn run(mut cmd: tokio::process::Command, what: &str) -> String {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let out = tokio::time::timeout(COMMAND_DEADLINE, cmd.output())
        .await
        .unwrap_or_else(|_| panic!("{what}: no answer within {COMMAND_DEADLINE:?}"))
        .unwrap_or_else(|e| panic!("{what}: {e}"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "{what} failed ({}): {text}",
        out.status
    );
    text
}

/// `kill -<signal> pids...`, synchronously (also used from `Drop`); errors ignored: a process may be gone.
fn signal(sig: &str, pids: &[u32]) {
    if pids.is_empty() {
        return;
    }
    let _ = std::process::Command::new("kill")
        .arg(format!("-{sig}"))
        .args(pids.iter().map(u32::to_string))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

/// The direct children of `parent`, from `/proc/<pid>/stat` (the field after the command name).
fn children_of(parent: u32) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .ok()
                .and_then(|stat| {
                    // `pid (comm) state ppid ...`; comm may hold spaces and parentheses.
                    let after = stat.rsplit_once(')')?.1;
                    after.split_whitespace().nth(1)?.parse::<u32>().ok()
                })
                == Some(parent)
        })
        .collect()
}

/// Whether `pid` is a live `postgres` process (a pid from a stale file may have been reused).
fn is_postgres(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.trim() == "postgres")
}

impl Postgres {
    /// A fresh cluster (`initdb`), started: trust authentication, `fsync=on`, `synchronous_commit=on`.
    pub async fn start_new() -> Postgres {
        Self::start_new_with(Extra::default()).await
    }

    /// [`start_new`](Self::start_new), with `extra` files and settings (e.g. `ssl=on` and its certificate).
    pub async fn start_new_with(extra: Extra) -> Postgres {
        let dir = tempfile::Builder::new()
            .prefix("broker-faults-pg-")
            .tempdir()
            .unwrap();
        let as_postgres_user = running_as_root();
        if as_postgres_user {
            let mut chown = tokio::process::Command::new("chown");
            chown.arg("postgres:postgres").arg(dir.path());
            run(chown, "chown postgres").await;
        }
        let mut pg = Postgres {
            dir,
            port: 0,
            bin: bin_dir(),
            as_postgres_user,
            state: State::Stopped,
            settings: Vec::new(),
        };
        let shown = pg.dir.path().display().to_string();
        pg.settings = extra
            .settings
            .iter()
            .map(|(k, v)| format!("-c {k}={}", v.replace("{dir}", &shown)))
            .collect();
        for (name, text) in &extra.files {
            use std::os::unix::fs::PermissionsExt as _;
            let path = pg.dir.path().join(name);
            std::fs::write(&path, text).unwrap();
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
            if as_postgres_user {
                let mut chown = tokio::process::Command::new("chown");
                chown.arg("postgres:postgres").arg(&path);
                run(chown, "chown postgres").await;
            }
        }
        let mut initdb = pg.command("initdb");
        initdb
            .arg("-D")
            .arg(pg.data_dir())
            // fsync of the initial files only; the server itself runs with fsync=on.
            .args(["-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-sync"])
            .arg("--no-instructions");
        run(initdb, "initdb").await;
        // A port taken between choosing and binding makes `pg_ctl start` fail: try another.
        for attempt in 1..=3 {
            pg.port = free_port();
            if pg.try_start().await.is_ok() {
                return pg;
            }
            eprintln!(
                "faults: postgres did not start on port {} (attempt {attempt})",
                pg.port
            );
        }
        panic!("postgres did not start: {}", pg.log_tail());
    }

    fn command(&self, tool: &str) -> tokio::process::Command {
        let program = self.bin.join(tool);
        if self.as_postgres_user {
            let mut cmd = tokio::process::Command::new("runuser");
            cmd.args(["-u", "postgres", "--"]).arg(program);
            cmd
        } else {
            tokio::process::Command::new(program)
        }
    }

    fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("server.log")
    }

    pub fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(self.log_path()).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }

    /// `postgres://user@127.0.0.1:<port>/database` (trust authentication: no password).
    pub fn url(&self, user: &str, database: &str) -> String {
        format!("postgres://{user}@127.0.0.1:{}/{database}", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// A superuser connection to `database`, opened within 10 s; each statement on it bounded to 30 s.
    pub async fn superuser(&self, database: &str) -> sqlx::PgConnection {
        let url = self.url("postgres", database);
        let mut conn =
            tokio::time::timeout(Duration::from_secs(10), sqlx::PgConnection::connect(&url))
                .await
                .expect("superuser connection within 10 s")
                .unwrap();
        sqlx::query("SET statement_timeout = '30s'")
            .execute(&mut conn)
            .await
            .unwrap();
        conn
    }

    async fn try_start(&mut self) -> Result<(), String> {
        let mut options = format!(
            "-p {} -c listen_addresses=127.0.0.1 -c unix_socket_directories={} -c fsync=on \
             -c synchronous_commit=on -c max_connections=300",
            self.port,
            self.dir.path().display()
        );
        for setting in &self.settings {
            options.push(' ');
            options.push_str(setting);
        }
        let mut cmd = self.command("pg_ctl");
        cmd.arg("-D")
            .arg(self.data_dir())
            .arg("-l")
            .arg(self.log_path())
            .args(["-w", "-t", PG_CTL_WAIT_SECS, "-o", &options, "start"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true);
        let status = tokio::time::timeout(COMMAND_DEADLINE, cmd.status())
            .await
            .map_err(|_| "pg_ctl start did not return".to_owned())?
            .map_err(|e| e.to_string())?;
        if status.success() {
            self.state = State::Running;
            Ok(())
        } else {
            Err(format!("pg_ctl start: {status}"))
        }
    }

    /// Starts the stopped server again (on the same port) and returns once it accepts connections.
    pub async fn start(&mut self) {
        assert_eq!(self.state, State::Stopped, "start a stopped server");
        if let Err(e) = self.try_start().await {
            panic!("{e}: {}", self.log_tail());
        }
    }

    /// Stops the server and returns once it is down.
    pub async fn stop(&mut self, mode: StopMode) {
        assert_eq!(self.state, State::Running, "stop a running server");
        let mut cmd = self.command("pg_ctl");
        cmd.arg("-D").arg(self.data_dir()).args([
            "-m",
            mode.as_str(),
            "-w",
            "-t",
            PG_CTL_WAIT_SECS,
            "stop",
        ]);
        run(cmd, "pg_ctl stop").await;
        self.state = State::Stopped;
    }

    fn postmaster_pid(&self) -> Option<u32> {
        std::fs::read_to_string(self.data_dir().join("postmaster.pid"))
            .ok()?
            .lines()
            .next()?
            .trim()
            .parse()
            .ok()
    }

    /// SIGSTOPs the postmaster, then every process it forked: the server stops answering without
    /// closing a single connection.
    pub async fn freeze(&mut self) {
        assert_eq!(self.state, State::Running, "freeze a running server");
        let postmaster = self.postmaster_pid().expect("postmaster.pid");
        // The postmaster first, so that it forks nothing between the listing and the stopping.
        signal("STOP", &[postmaster]);
        let mut frozen = vec![postmaster];
        frozen.extend(children_of(postmaster));
        signal("STOP", frozen.get(1..).unwrap_or_default());
        self.state = State::Frozen(frozen);
    }

    /// SIGCONTs what [`freeze`](Self::freeze) stopped.
    pub async fn thaw(&mut self) {
        let State::Frozen(pids) = &self.state else {
            panic!("thaw a frozen server");
        };
        signal("CONT", pids);
        self.state = State::Running;
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        if let State::Frozen(pids) = &self.state {
            signal("CONT", pids);
        }
        if self.state != State::Stopped {
            let program = self.bin.join("pg_ctl");
            let mut cmd = if self.as_postgres_user {
                let mut c = std::process::Command::new("runuser");
                c.args(["-u", "postgres", "--"]).arg(&program);
                c
            } else {
                std::process::Command::new(&program)
            };
            let stopped = cmd
                .arg("-D")
                .arg(self.data_dir())
                .args(["-m", "immediate", "-w", "-t", "10", "stop"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success());
            // Last resort, only for our own postmaster: nothing of ours may outlive the test.
            if let (false, Some(postmaster)) = (stopped, self.postmaster_pid()) {
                if is_postgres(postmaster) {
                    let mut all = children_of(postmaster);
                    all.push(postmaster);
                    signal("KILL", &all);
                }
            }
        }
        // The TempDir removes the directory.
    }
}
