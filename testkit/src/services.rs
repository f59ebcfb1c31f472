//! Throw-away backing services a test may stop and start at will: a PostgreSQL cluster of its
//! own ([`Postgres`]), a Redis of its own that keeps nothing on disk ([`Redis`]), and a
//! `p11-kit server` exporting the SoftHSM2 token over a unix socket ([`P11KitServer`]), so that
//! processes loading p11-kit's client module lose their HSM when it stops.
//!
//! Never the machine's shared PostgreSQL (5432) or Redis (6379): other tests use them. Each
//! service is stopped and its files removed on drop.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::workspace_root;

/// p11-kit's client module (Debian package `p11-kit-modules`).
pub const P11_KIT_CLIENT: &str = "/usr/lib/x86_64-linux-gnu/pkcs11/p11-kit-client.so";
/// The module `p11-kit server` exports.
pub const SOFTHSM2: &str = "/usr/lib/softhsm/libsofthsm2.so";

/// A free loopback port (the listener is closed again at once).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn wait_for(what: &str, deadline: Duration, mut ready: impl FnMut() -> bool) {
    let until = Instant::now() + deadline;
    while !ready() {
        assert!(Instant::now() < until, "{what} did not come up");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn run(command: &mut Command, what: &str) {
    let output = command.output().unwrap_or_else(|e| panic!("{what}: {e}"));
    assert!(
        output.status.success(),
        "{what}: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| o.stdout.starts_with(b"0\n"))
        .unwrap_or(false)
}

/// A PostgreSQL cluster of its own (`initdb` + `pg_ctl` of the newest installed server, or
/// `SHOMEI_PG_BIN`), on a free loopback port, trust authentication, data in a temporary
/// directory. PostgreSQL refuses to run as root, so as root its commands run as `postgres`.
pub struct Postgres {
    bin: PathBuf,
    dir: PathBuf,
    port: u16,
    as_postgres: bool,
    running: bool,
}

impl Postgres {
    pub fn start() -> Postgres {
        let bin = std::env::var_os("SHOMEI_PG_BIN")
            .map(PathBuf::from)
            .unwrap_or_else(newest_postgres_bin);
        // Under /tmp, not target/: the `postgres` user must be able to reach it.
        let dir = std::env::temp_dir().join(format!("shomei-pg-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).unwrap();
        let as_postgres = is_root();
        if as_postgres {
            run(
                Command::new("chown").arg("postgres:postgres").arg(&dir),
                "chown the cluster directory",
            );
        }
        let mut pg = Postgres {
            bin,
            dir,
            port: free_port(),
            as_postgres,
            running: false,
        };
        let data = pg.dir.join("data");
        run(
            pg.command("initdb")
                .arg("-D")
                .arg(&data)
                .args(["-A", "trust", "-U", "postgres", "-E", "UTF8"])
                .args(["--locale", "C", "--no-sync"]),
            "initdb",
        );
        pg.start_again();
        pg
    }

    fn command(&self, program: &str) -> Command {
        let program = self.bin.join(program);
        if self.as_postgres {
            let mut command = Command::new("runuser");
            command.args(["-u", "postgres", "--"]).arg(program);
            command
        } else {
            Command::new(program)
        }
    }

    /// `postgres://postgres@127.0.0.1:PORT` (no database: append `/NAME`).
    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}", self.port)
    }

    pub fn log_path(&self) -> PathBuf {
        self.dir.join("postgres.log")
    }

    /// Starts the server (again) and waits until it accepts connections.
    pub fn start_again(&mut self) {
        let options = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=300",
            self.port,
            self.dir.display()
        );
        run(
            self.command("pg_ctl")
                .arg("-D")
                .arg(self.dir.join("data"))
                .arg("-l")
                .arg(self.log_path())
                .args(["-w", "-t", "60", "-o", &options, "start"]),
            "pg_ctl start",
        );
        self.running = true;
    }

    /// Stops the server the hard way (`-m immediate`: like a crash, recovery at the next start).
    pub fn stop(&mut self) {
        run(
            self.command("pg_ctl")
                .arg("-D")
                .arg(self.dir.join("data"))
                .args(["-m", "immediate", "-w", "stop"]),
            "pg_ctl stop",
        );
        self.running = false;
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        if self.running {
            let _ = self
                .command("pg_ctl")
                .arg("-D")
                .arg(self.dir.join("data"))
                .args(["-m", "immediate", "-w", "stop"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn newest_postgres_bin() -> PathBuf {
    let mut versions: Vec<u32> = std::fs::read_dir("/usr/lib/postgresql")
        .expect("PostgreSQL server binaries under /usr/lib/postgresql")
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect();
    versions.sort();
    let version = versions.last().expect("an installed PostgreSQL version");
    PathBuf::from(format!("/usr/lib/postgresql/{version}/bin"))
}

/// A `redis-server` of its own on a free loopback port that keeps nothing on disk: stopped and
/// started again, it comes back empty.
pub struct Redis {
    port: u16,
    log: PathBuf,
    child: Option<Child>,
}

impl Redis {
    pub fn start(log_dir: &Path) -> Redis {
        std::fs::create_dir_all(log_dir).unwrap();
        let mut redis = Redis {
            port: free_port(),
            log: log_dir.join("redis.log"),
            child: None,
        };
        redis.start_again();
        redis
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    pub fn start_again(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no", "--daemonize", "no"])
            .stdout(Stdio::from(log.try_clone().unwrap()))
            .stderr(Stdio::from(log))
            .spawn()
            .expect("redis-server");
        self.child = Some(child);
        let url = self.url();
        wait_for("redis-server", Duration::from_secs(20), || {
            redis::Client::open(url.as_str())
                .and_then(|c| c.get_connection())
                .and_then(|mut c| redis::cmd("PING").query::<String>(&mut c))
                .is_ok()
        });
    }

    /// SIGKILL: whatever it held is gone.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.stop();
    }
}

/// `p11-kit server` exporting the SoftHSM2 token `shomei-dev` of one SoftHSM2 configuration on
/// a unix socket. Processes that load [`P11_KIT_CLIENT`] with `P11_KIT_SERVER_ADDRESS` set to
/// [`P11KitServer::address`] reach the token through it. The server forks a `p11-kit-remote`
/// per client connection; [`P11KitServer::stop`] kills its whole process group, so every
/// client's sessions fail at once, as with an HSM that went away.
pub struct P11KitServer {
    socket: PathBuf,
    softhsm2_conf: String,
    log: PathBuf,
    child: Option<Child>,
}

impl P11KitServer {
    pub fn start(socket: &Path, softhsm2_conf: &str) -> P11KitServer {
        let mut server = P11KitServer {
            socket: socket.to_owned(),
            softhsm2_conf: softhsm2_conf.to_owned(),
            log: socket.with_extension("log"),
            child: None,
        };
        server.start_again();
        server
    }

    /// The value for `P11_KIT_SERVER_ADDRESS`.
    pub fn address(&self) -> String {
        format!("unix:path={}", self.socket.display())
    }

    pub fn start_again(&mut self) {
        use std::os::unix::process::CommandExt;
        let _ = std::fs::remove_file(&self.socket);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let child = Command::new("p11-kit")
            .args(["server", "-f", "-n"])
            .arg(&self.socket)
            .args(["-p", SOFTHSM2, "pkcs11:token=shomei-dev"])
            .env("SOFTHSM2_CONF", &self.softhsm2_conf)
            .process_group(0)
            .stdout(Stdio::from(log.try_clone().unwrap()))
            .stderr(Stdio::from(log))
            .spawn()
            .expect("p11-kit server (Debian package p11-kit)");
        self.child = Some(child);
        let socket = self.socket.clone();
        wait_for("p11-kit server", Duration::from_secs(20), || {
            std::os::unix::net::UnixStream::connect(&socket).is_ok()
        });
    }

    /// Kills the server and every `p11-kit-remote` it forked (one process group).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill")
                .args(["-KILL", "--", &format!("-{}", child.id())])
                .status();
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = std::fs::remove_file(&self.socket);
    }
}

impl Drop for P11KitServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Where a suite keeps the files of one run: `target/tmp/<name>/<id>/`.
pub fn scratch(name: &str) -> PathBuf {
    let dir = workspace_root()
        .join("target/tmp")
        .join(name)
        .join(uuid::Uuid::new_v4().simple().to_string());
    std::fs::create_dir_all(&dir).unwrap();
    dir
}
