//! Debian's `redis-server` (7.0) as a child process: one node, or a Cluster of several on
//! loopback, each in a directory of its own with an append-only file, so that a node stopped
//! and started again keeps its data (as a production Redis with persistence does).

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use crate::proc::{Proc, run};
use crate::{free_port, temp_dir};

/// A `redis-server` on a loopback port.
pub struct Redis {
    pub port: u16,
    pub dir: PathBuf,
    args: Vec<String>,
    proc: Option<Proc>,
}

/// `redis-server` and `redis-cli` on PATH (Debian's redis-server and redis-tools).
pub fn require_redis() {
    for tool in ["redis-server", "redis-cli"] {
        let ok = Command::new(tool)
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success());
        assert!(
            ok,
            "tier redis: {tool} not found: run scripts/test (as root on Debian), which installs \
             redis-server and redis-tools"
        );
    }
}

impl Redis {
    /// Starts a node (with `extra` arguments, e.g. `--requirepass P`) and waits until it
    /// answers.
    pub fn start(extra: &[&str]) -> Self {
        require_redis();
        let mut r = Self {
            port: free_port(),
            dir: temp_dir("redis"),
            args: extra.iter().map(|s| s.to_string()).collect(),
            proc: None,
        };
        r.run();
        r
    }

    /// `redis://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// (Re)starts the node on its port and directory, and waits until it answers PING.
    pub fn run(&mut self) {
        let mut cmd = Command::new("redis-server");
        cmd.args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .arg("--dir")
            .arg(&self.dir)
            .args(["--save", ""])
            .args(["--appendonly", "yes", "--appendfsync", "always"])
            .args(&self.args);
        let log = self.dir.join("redis.log");
        self.proc = Some(Proc::spawn("redis", cmd, &log));
        let deadline = Instant::now() + Duration::from_secs(10);
        while !self.cli(&["PING"]).contains("PONG") {
            assert!(
                Instant::now() < deadline,
                "redis-server did not start: {}",
                crate::tail(&log, 20)
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Stops the node (SIGKILL, as a crash or a network cut looks to its clients).
    pub fn stop(&mut self) {
        if let Some(mut p) = self.proc.take() {
            p.stop();
        }
    }

    /// `redis-cli -p PORT ARGS…`, its standard output.
    pub fn cli(&self, args: &[&str]) -> String {
        let mut cmd = Command::new("redis-cli");
        cmd.args(["-p", &self.port.to_string()]);
        if let Some(i) = self.args.iter().position(|a| a == "--requirepass") {
            cmd.env("REDISCLI_AUTH", &self.args[i + 1]);
        }
        let out = cmd.args(args).output().expect("redis-cli runs");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// How many times `command` has run on this node (`INFO commandstats`).
    pub fn calls(&self, command: &str) -> u64 {
        self.cli(&["INFO", "commandstats"])
            .lines()
            .find_map(|l| l.strip_prefix(&format!("cmdstat_{command}:calls=")))
            .and_then(|rest| rest.split(',').next())
            .and_then(|n| n.parse().ok())
            .unwrap_or(0)
    }

    pub fn log(&self) -> PathBuf {
        self.dir.join("redis.log")
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A Redis Cluster of `n` primaries on loopback, formed and agreed.
pub struct Cluster {
    pub nodes: Vec<Redis>,
}

impl Cluster {
    pub fn start(n: usize) -> Self {
        let nodes: Vec<Redis> = (0..n)
            .map(|_| Redis::start(&["--cluster-enabled", "yes", "--cluster-node-timeout", "2000"]))
            .collect();
        let addrs: Vec<String> = nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port))
            .collect();
        let out = run(Command::new("redis-cli")
            .args(["--cluster", "create"])
            .args(&addrs)
            .args(["--cluster-replicas", "0", "--cluster-yes"]));
        assert!(
            out.status.success(),
            "redis-cli --cluster create: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        // Every node must agree before clients route by slot.
        let deadline = Instant::now() + Duration::from_secs(20);
        while !nodes
            .iter()
            .all(|n| n.cli(&["CLUSTER", "INFO"]).contains("cluster_state:ok"))
        {
            assert!(Instant::now() < deadline, "the cluster did not form");
            std::thread::sleep(Duration::from_millis(100));
        }
        Self { nodes }
    }

    /// `redis-cluster://FIRST?node=SECOND&node=…`.
    pub fn url(&self) -> String {
        let mut addrs = self.nodes.iter().map(|n| format!("127.0.0.1:{}", n.port));
        let first = addrs.next().expect("at least one node");
        let rest: Vec<String> = addrs.map(|a| format!("node={a}")).collect();
        format!("redis-cluster://{first}?{}", rest.join("&"))
    }

    /// The sum of `command`'s calls over every node.
    pub fn calls(&self, command: &str) -> u64 {
        self.nodes.iter().map(|n| n.calls(command)).sum()
    }
}
