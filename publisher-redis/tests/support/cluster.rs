//! Clusters of the tests' own: a Redis Cluster of six `redis-server`s (three masters, three
//! replicas) and a sentinel-watched master with one replica and three sentinels, on free
//! ports, in a temporary directory, killed on drop.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use publisher_core::testing::{Harness, OwnCluster, ProbeHarness, free_port};
use publisher_core::{Publisher, Result};
use publisher_redis::testing::StreamProbe;
use publisher_redis::{Mode, RedisConfig, RedisPublisher};

/// One `redis-server` (or sentinel) process.
struct Node {
    port: u16,
    dir: PathBuf,
    args: Vec<String>,
    child: Option<Child>,
}

impl Node {
    fn spawn(port: u16, dir: &Path, args: &[String]) -> Self {
        let dir = dir.join(port.to_string());
        std::fs::create_dir_all(&dir).expect("node dir");
        let mut node = Node {
            port,
            dir,
            args: args.to_vec(),
            child: None,
        };
        node.start();
        node
    }

    /// Starts the process (again) in its own directory, with what it kept there.
    fn start(&mut self) {
        let child = Command::new("redis-server")
            .args(&self.args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .current_dir(&self.dir)
            .spawn()
            .expect("redis-server must be on PATH for the cluster tests");
        self.child = Some(child);
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Starts a node on a free port (`args` makes its arguments for that port) and waits until it
/// answers PING; on another port when it does not within 5 s (a port another test took
/// between our check and the server's bind: the server exits), at most 5 times.
async fn start_node(dir: &Path, args: impl Fn(u16) -> Vec<String>) -> Node {
    for _ in 0..5 {
        let port = free_port();
        let mut node = Node::spawn(port, dir, &args(port));
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if ask_text(port, &cmd(&["PING"])).await.as_deref() == Some("PONG") {
                return node;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        node.kill();
    }
    panic!("a redis-server of the test's own did not start in 5 attempts");
}

/// A command to one node, by redis-rs, bounded.
async fn ask(port: u16, cmd: &redis::Cmd) -> Option<redis::Value> {
    let client = redis::Client::open(format!("redis://127.0.0.1:{port}")).ok()?;
    let config = redis::AsyncConnectionConfig::new()
        .set_connection_timeout(Some(Duration::from_secs(1)))
        .set_response_timeout(Some(Duration::from_secs(2)));
    let mut conn = client
        .get_multiplexed_async_connection_with_config(&config)
        .await
        .ok()?;
    cmd.query_async(&mut conn).await.ok()
}

async fn ask_text(port: u16, cmd: &redis::Cmd) -> Option<String> {
    redis::from_redis_value(ask(port, cmd).await?).ok()
}

fn cmd(args: &[&str]) -> redis::Cmd {
    let mut c = redis::cmd(args[0]);
    for a in &args[1..] {
        c.arg(*a);
    }
    c
}

/// Waits until `ready` holds, polling every 100 ms, or panics with `what` after `within`.
async fn wait_until<F, Fut>(within: Duration, what: &str, mut ready: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + within;
    while !ready().await {
        assert!(Instant::now() < deadline, "{what} within {within:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Whether `redis-server` and `redis-cli` are here (the cluster tests skip otherwise, saying
/// so, except under CI).
pub fn tools_missing() -> bool {
    let here = |tool: &str| {
        Command::new(tool)
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    let missing = !here("redis-server") || !here("redis-cli");
    if missing {
        assert!(
            !publisher_core::testing::is_ci(),
            "redis-server and redis-cli must be installed under CI"
        );
        eprintln!("redis-server or redis-cli missing: the cluster tests are skipped");
    }
    missing
}

/// A Redis Cluster of three masters and three replicas.
pub struct RedisCluster {
    nodes: tokio::sync::Mutex<Vec<Node>>,
    ports: Vec<u16>,
    _dir: tempfile::TempDir,
}

impl RedisCluster {
    pub async fn start() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut nodes = Vec::new();
        for _ in 0..6 {
            let node = start_node(dir.path(), |port| {
                [
                    "--port",
                    &port.to_string(),
                    "--bind",
                    "127.0.0.1",
                    "--cluster-enabled",
                    "yes",
                    "--cluster-port",
                    &free_port().to_string(),
                    "--cluster-config-file",
                    "nodes.conf",
                    "--cluster-node-timeout",
                    "1000",
                    // A replica may take over however long ago it last heard from its master
                    // (by default an idle minute makes it ineligible, and nothing fails over).
                    "--cluster-replica-validity-factor",
                    "0",
                    "--save",
                    "",
                    "--appendonly",
                    "yes",
                    "--appendfsync",
                    "always",
                ]
                .iter()
                .map(|s| s.to_string())
                .collect()
            })
            .await;
            nodes.push(node);
        }
        let ports: Vec<u16> = nodes.iter().map(|n| n.port).collect();
        let created = Command::new("redis-cli")
            .arg("--cluster")
            .arg("create")
            .args(nodes.iter().map(Node::addr))
            .args(["--cluster-replicas", "1", "--cluster-yes"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .expect("redis-cli");
        assert!(created.success(), "redis-cli --cluster create failed");
        let cluster = RedisCluster {
            nodes: tokio::sync::Mutex::new(nodes),
            ports,
            _dir: dir,
        };
        cluster.wait_ok(&cluster.ports).await;
        // Every replica has finished its first sync (a replica promoted before it did would
        // come up empty).
        for &port in &cluster.ports {
            wait_until(
                Duration::from_secs(30),
                "a replica did not sync",
                || async move {
                    ask_text(port, &cmd(&["INFO", "replication"]))
                        .await
                        .is_some_and(|i| {
                            i.contains("role:master") || i.contains("master_link_status:up")
                        })
                },
            )
            .await;
        }
        cluster
    }

    /// The ports of the masters that serve slots.
    pub async fn masters(&self) -> Vec<u16> {
        let live = self.live_ports().await;
        let nodes = ask_text(live[0], &cmd(&["CLUSTER", "NODES"]))
            .await
            .expect("CLUSTER NODES");
        nodes
            .lines()
            .filter_map(|line| {
                let fields: Vec<&str> = line.split_whitespace().collect();
                let serving =
                    fields.len() > 8 && fields[2].contains("master") && !fields[2].contains("fail");
                serving
                    .then(|| {
                        fields[1]
                            .split('@')
                            .next()?
                            .rsplit_once(':')?
                            .1
                            .parse()
                            .ok()
                    })
                    .flatten()
            })
            .collect()
    }

    /// `key`'s hash slot.
    pub async fn keyslot(&self, key: &str) -> String {
        let value = ask(self.ports[0], &cmd(&["CLUSTER", "KEYSLOT", key]))
            .await
            .expect("CLUSTER KEYSLOT");
        redis::from_redis_value::<i64>(value)
            .expect("slot")
            .to_string()
    }

    /// A node's id.
    pub async fn id(&self, port: u16) -> String {
        ask_text(port, &cmd(&["CLUSTER", "MYID"]))
            .await
            .expect("CLUSTER MYID")
    }

    /// Runs a command on one node, panicking when it fails.
    pub async fn run(&self, port: u16, args: &[&str]) {
        let client = redis::Client::open(format!("redis://127.0.0.1:{port}")).expect("client");
        let mut conn = client
            .get_multiplexed_async_connection()
            .await
            .expect("connection");
        cmd(args)
            .query_async::<redis::Value>(&mut conn)
            .await
            .unwrap_or_else(|e| panic!("{args:?} on {port}: {e}"));
    }

    /// `XLEN key` on one node, after `ASKING` (for a key of a slot it is importing).
    pub async fn xlen_asking(&self, port: u16, key: &str) -> i64 {
        let client = redis::Client::open(format!("redis://127.0.0.1:{port}")).expect("client");
        let mut conn = client
            .get_multiplexed_async_connection()
            .await
            .expect("connection");
        let (_, n): (redis::Value, i64) = redis::pipe()
            .cmd("ASKING")
            .cmd("XLEN")
            .arg(key)
            .query_async(&mut conn)
            .await
            .expect("ASKING XLEN");
        n
    }

    /// Every node's port.
    pub fn ports(&self) -> Vec<u16> {
        self.ports.clone()
    }

    /// `redis+cluster://` listing every node.
    pub fn url(&self) -> String {
        let hosts: Vec<String> = self
            .ports
            .iter()
            .map(|p| format!("127.0.0.1:{p}"))
            .collect();
        format!("redis+cluster://{}", hosts.join(","))
    }

    /// Waits until every node of `ports` says `cluster_state:ok` and all agree on who serves
    /// every slot.
    async fn wait_ok(&self, ports: &[u16]) {
        for &port in ports {
            wait_until(
                Duration::from_secs(30),
                "the cluster did not become ok",
                || async move {
                    ask_text(port, &cmd(&["CLUSTER", "INFO"]))
                        .await
                        .is_some_and(|i| i.contains("cluster_state:ok"))
                },
            )
            .await;
        }
    }

    /// The port of the master serving `key`'s slot, by `CLUSTER NODES` of a live node.
    pub async fn master_of(&self, key: &str) -> u16 {
        self.serving(key)
            .await
            .expect("no master serves the key's slot")
    }

    /// The port of the master serving `key`'s slot, if one does (none while a failover runs).
    async fn serving(&self, key: &str) -> Option<u16> {
        let port = *self.ports.first().expect("nodes");
        let live = self.live_ports().await;
        let port = live.first().copied().unwrap_or(port);
        let slot: i64 = redis::from_redis_value(
            ask(port, &cmd(&["CLUSTER", "KEYSLOT", key]))
                .await
                .expect("CLUSTER KEYSLOT"),
        )
        .expect("slot");
        let nodes = ask_text(port, &cmd(&["CLUSTER", "NODES"]))
            .await
            .expect("CLUSTER NODES");
        for line in nodes.lines() {
            let fields: Vec<&str> = line.split_whitespace().collect();
            if fields.len() < 9 || !fields[2].contains("master") || fields[2].contains("fail") {
                continue;
            }
            let serves = fields[8..].iter().any(|range| {
                let (a, b) = range.split_once('-').unwrap_or((range, range));
                match (a.parse::<i64>(), b.parse::<i64>()) {
                    (Ok(a), Ok(b)) => (a..=b).contains(&slot),
                    _ => false,
                }
            });
            if serves {
                let addr = fields[1].split('@').next().expect("addr");
                return addr.rsplit_once(':').and_then(|(_, p)| p.parse().ok());
            }
        }
        None
    }

    async fn live_ports(&self) -> Vec<u16> {
        self.nodes
            .lock()
            .await
            .iter()
            .filter(|n| n.child.is_some())
            .map(|n| n.port)
            .collect()
    }

    /// Kills the master serving `key` (SIGKILL) and waits until its replica took over the
    /// slots and the surviving nodes say the cluster is ok.
    pub async fn kill_master_of(&self, key: &str) -> u16 {
        let port = self.master_of(key).await;
        self.node(port, Node::kill).await;
        let live = self.live_ports().await;
        wait_until(Duration::from_secs(30), "no replica took over", || async {
            self.serving(key).await.is_some_and(|p| p != port)
        })
        .await;
        self.wait_ok(&live).await;
        port
    }

    /// Starts a killed node again: it rejoins as a replica of whoever took its slots.
    pub async fn restart(&self, port: u16) {
        self.node(port, Node::start).await;
        wait_until(
            Duration::from_secs(30),
            "the restarted node did not sync",
            || async move {
                ask_text(port, &cmd(&["INFO", "replication"]))
                    .await
                    .is_some_and(|i| {
                        i.contains("role:slave") && i.contains("master_link_status:up")
                    })
            },
        )
        .await;
    }

    async fn node(&self, port: u16, f: impl FnOnce(&mut Node)) {
        f(self
            .nodes
            .lock()
            .await
            .iter_mut()
            .find(|n| n.port == port)
            .expect("the node is ours"));
    }
}

/// Opens stream publishers on `url` with `wait_replicas`.
pub fn opener(
    url: String,
    wait_replicas: u32,
) -> impl Fn() -> std::future::Ready<Result<Box<dyn Publisher>>> + Send + Sync + 'static {
    move || {
        std::future::ready(
            RedisPublisher::builder()
                .config(RedisConfig {
                    mode: Mode::Stream,
                    wait_replicas,
                    ..RedisConfig::from_url(&url).expect("url")
                })
                .build()
                .map(|p| Box::new(p) as Box<dyn Publisher>),
        )
    }
}

/// A Redis Cluster for the node failure scenario: publishers list every node and wait for one
/// replica (`wait_replicas=1`), so that what was acknowledged survives its master's death.
pub struct OwnRedisCluster {
    cluster: RedisCluster,
    harness: ProbeHarness<StreamProbe>,
}

impl OwnRedisCluster {
    pub async fn start() -> Option<Self> {
        if tools_missing() {
            return None;
        }
        let cluster = RedisCluster::start().await;
        let url = cluster.url();
        Some(Self {
            harness: ProbeHarness::new(StreamProbe::new(url.clone()), opener(url, 1)),
            cluster,
        })
    }
}

#[publisher_core::async_trait]
impl OwnCluster for OwnRedisCluster {
    fn harness(&self) -> &dyn Harness {
        &self.harness
    }

    fn describe(&self) -> String {
        "cluster of 3 masters and 3 replicas, wait_replicas=1, the events' master killed, its \
         replica promoted, the old master back as a replica"
            .into()
    }

    async fn fail_node(&self, topic: &str) {
        let killed = self.cluster.kill_master_of(topic).await;
        self.cluster.restart(killed).await;
    }
}

/// A master with one replica and three sentinels (quorum 2).
pub struct Sentineled {
    master: tokio::sync::Mutex<Node>,
    _replica: Node,
    _sentinels: Vec<Node>,
    sentinel_ports: Vec<u16>,
    replica_port: u16,
    master_port: u16,
    _dir: tempfile::TempDir,
}

pub const MASTER_NAME: &str = "publisher-test-master";

impl Sentineled {
    pub async fn start() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let data = |port: u16| -> Vec<String> {
            [
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "yes",
                "--appendfsync",
                "always",
            ]
            .iter()
            .map(|s| s.to_string())
            .collect()
        };
        let master = start_node(dir.path(), data).await;
        let master_port = master.port;
        let replica = start_node(dir.path(), |port| {
            let mut args = data(port);
            args.extend([
                "--replicaof".into(),
                "127.0.0.1".into(),
                master_port.to_string(),
            ]);
            args
        })
        .await;
        let replica_port = replica.port;
        let mut sentinels = Vec::new();
        let mut sentinel_ports = Vec::new();
        for _ in 0..3 {
            let conf_dir = dir.path().join(format!("sentinel-{}", sentinels.len()));
            std::fs::create_dir_all(&conf_dir).expect("dir");
            let conf = conf_dir.join("sentinel.conf");
            let sentinel = start_node(dir.path(), |port| {
                std::fs::write(
                    &conf,
                    format!(
                        "port {port}\nbind 127.0.0.1\n\
                         sentinel monitor {MASTER_NAME} 127.0.0.1 {master_port} 2\n\
                         sentinel down-after-milliseconds {MASTER_NAME} 1000\n\
                         sentinel failover-timeout {MASTER_NAME} 5000\n\
                         sentinel parallel-syncs {MASTER_NAME} 1\n"
                    ),
                )
                .expect("sentinel.conf");
                vec![conf.display().to_string(), "--sentinel".into()]
            })
            .await;
            sentinel_ports.push(sentinel.port);
            sentinels.push(sentinel);
        }
        let s = Sentineled {
            master: tokio::sync::Mutex::new(master),
            _replica: replica,
            _sentinels: sentinels,
            sentinel_ports,
            replica_port,
            master_port,
            _dir: dir,
        };
        // Every sentinel knows the master, and the replica is in sync.
        for &port in &s.sentinel_ports {
            wait_until(
                Duration::from_secs(20),
                "a sentinel did not find the master",
                || async move {
                    ask(
                        port,
                        &cmd(&["SENTINEL", "GET-MASTER-ADDR-BY-NAME", MASTER_NAME]),
                    )
                    .await
                    .is_some_and(|v| v != redis::Value::Nil)
                },
            )
            .await;
        }
        // Each sentinel knows the other two and the replica (they find each other through the
        // master every 2 s): before that, a dead master gets no quorum and nothing fails over.
        for &port in &s.sentinel_ports {
            wait_until(
                Duration::from_secs(30),
                "the sentinels did not find each other",
                || async move {
                    let known = |v: Option<redis::Value>| match v {
                        Some(redis::Value::Array(items)) => items.len(),
                        _ => 0,
                    };
                    known(ask(port, &cmd(&["SENTINEL", "SENTINELS", MASTER_NAME])).await) == 2
                        && known(ask(port, &cmd(&["SENTINEL", "REPLICAS", MASTER_NAME])).await) == 1
                },
            )
            .await;
        }
        let replica = s.replica_port;
        wait_until(
            Duration::from_secs(20),
            "the replica did not sync",
            || async move {
                ask_text(replica, &cmd(&["INFO", "replication"]))
                    .await
                    .is_some_and(|i| i.contains("master_link_status:up"))
            },
        )
        .await;
        s
    }

    /// `redis+sentinel://` listing every sentinel.
    pub fn url(&self) -> String {
        let hosts: Vec<String> = self
            .sentinel_ports
            .iter()
            .map(|p| format!("127.0.0.1:{p}"))
            .collect();
        format!("redis+sentinel://{}/{MASTER_NAME}", hosts.join(","))
    }

    /// Starts the killed master again: the sentinels make it a replica of the new master.
    pub async fn restart_old_master(&self) {
        self.master.lock().await.start();
        let port = self.master_port;
        wait_until(
            Duration::from_secs(30),
            "the old master did not rejoin as a replica",
            || async move {
                ask_text(port, &cmd(&["INFO", "replication"]))
                    .await
                    .is_some_and(|i| {
                        i.contains("role:slave") && i.contains("master_link_status:up")
                    })
            },
        )
        .await;
    }

    /// The replica's port.
    pub fn replica_port(&self) -> u16 {
        self.replica_port
    }

    /// Kills the master (SIGKILL) and waits until the sentinels name the replica.
    pub async fn kill_master(&self) {
        self.master.lock().await.kill();
        let (sentinel, replica) = (self.sentinel_ports[0], self.replica_port);
        wait_until(
            Duration::from_secs(30),
            "the sentinels did not fail over",
            || async move {
                let addr = ask(
                    sentinel,
                    &cmd(&["SENTINEL", "GET-MASTER-ADDR-BY-NAME", MASTER_NAME]),
                )
                .await;
                let addr: Option<Vec<String>> = addr.and_then(|v| redis::from_redis_value(v).ok());
                addr.is_some_and(|a| a.get(1) == Some(&replica.to_string()))
            },
        )
        .await;
        let _ = self.master_port;
    }
}

/// A sentinel-watched master for the node failure scenario (`wait_replicas=1`).
pub struct OwnSentineled {
    servers: Sentineled,
    harness: ProbeHarness<StreamProbe>,
}

impl OwnSentineled {
    pub async fn start() -> Option<Self> {
        if tools_missing() {
            return None;
        }
        let servers = Sentineled::start().await;
        let url = servers.url();
        Some(Self {
            harness: ProbeHarness::new(StreamProbe::new(url.clone()), opener(url, 1)),
            servers,
        })
    }
}

#[publisher_core::async_trait]
impl OwnCluster for OwnSentineled {
    fn harness(&self) -> &dyn Harness {
        &self.harness
    }

    fn describe(&self) -> String {
        "sentinels (3) over a master and a replica, wait_replicas=1, the master killed, the \
         replica promoted, the old master back as a replica"
            .into()
    }

    async fn fail_node(&self, _topic: &str) {
        self.servers.kill_master().await;
        self.servers.restart_old_master().await;
    }
}
