//! Where the Redis nodes are: one server, a Redis Cluster, or a master found through
//! sentinels; parsed from the URL's scheme and host list.

use publisher_core::{Error, Result};

use crate::BACKEND;

/// The default port of a Redis node.
const REDIS_PORT: u16 = 6379;
/// The default port of a sentinel.
const SENTINEL_PORT: u16 = 26379;

/// How the URL reaches Redis.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// One server (or a proxy before several): `redis://`, `rediss://`.
    Single,
    /// A Redis Cluster: `redis+cluster://`, `rediss+cluster://`.
    Cluster,
    /// A master looked up through sentinels: `redis+sentinel://`, `rediss+sentinel://`.
    Sentinel,
}

/// A URL's scheme: the kind and whether the nodes speak TLS.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Scheme {
    pub(crate) kind: Kind,
    pub(crate) tls: bool,
}

impl Scheme {
    /// The scheme of `url` (case-insensitive); `None` for one we do not know.
    pub(crate) fn of(url: &str) -> Option<Scheme> {
        let (scheme, _) = url.split_once("://")?;
        let (kind, tls) = match scheme.to_ascii_lowercase().as_str() {
            "redis" => (Kind::Single, false),
            "rediss" => (Kind::Single, true),
            "redis+cluster" => (Kind::Cluster, false),
            "rediss+cluster" => (Kind::Cluster, true),
            "redis+sentinel" => (Kind::Sentinel, false),
            "rediss+sentinel" => (Kind::Sentinel, true),
            _ => return None,
        };
        Some(Scheme { kind, tls })
    }

    /// The scheme of one node's URL for redis-rs.
    fn node(self) -> &'static str {
        if self.tls { "rediss" } else { "redis" }
    }
}

/// A cluster or sentinel URL taken apart: the nodes (or sentinels) as one-node URLs for
/// redis-rs, and the path's master name and database.
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct Hosts {
    /// One `redis[s]://[user:password@]host:port[?query]` per listed host, user and query
    /// repeated. For sentinels, without the user (it is the Redis nodes', see
    /// [`Hosts::username`]).
    pub(crate) nodes: Vec<String>,
    /// Sentinel: the master's name (the path's first segment).
    pub(crate) master: Option<String>,
    /// Sentinel: the database (the path's second segment), 0 by default.
    pub(crate) db: i64,
    /// Sentinel: the Redis nodes' user and password, percent-decoded.
    pub(crate) username: Option<String>,
    pub(crate) password: Option<String>,
}

impl std::fmt::Debug for Hosts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hosts")
            .field("nodes", &self.nodes.len())
            .field("master", &self.master)
            .field("db", &self.db)
            .finish_non_exhaustive()
    }
}

fn bad(msg: impl Into<String>) -> Error {
    Error::config(BACKEND, "url", msg.into())
}

fn decode(s: &str) -> Result<String> {
    percent_encoding::percent_decode_str(s)
        .decode_utf8()
        .map(|s| s.into_owned())
        .map_err(|_| bad("the URL's user, password or master name is not valid UTF-8"))
}

/// Takes apart a `redis+cluster://` or `redis+sentinel://` URL (`kind` not `Single`):
/// `scheme://[user[:password]@]host[:port][,host[:port]…][/path][?query]`. The query is
/// handed to every node's URL as it is (only redis-rs's own `protocol` reaches here).
///
/// # Errors
/// `Config` naming `url`: no host, an empty or malformed host, a port that is not a number,
/// a path the kind does not take (a cluster has database 0 only; sentinels need
/// `/master[/db]`).
pub(crate) fn hosts(url: &str, scheme: Scheme) -> Result<Hosts> {
    let rest = url.split_once("://").map_or("", |(_, rest)| rest);
    // The user information first, up to the last `@`: a password may hold `/` or `?`, and
    // none of it may be read as a host, a path or a query (or shown in an error).
    let (userinfo, rest) = split_userinfo(rest);
    let (rest, query) = match rest.split_once('?') {
        Some((rest, query)) => (rest, Some(query)),
        None => (rest, None),
    };
    if rest.contains('#') {
        return Err(bad("the URL has a fragment (`#…`); Redis URLs take none"));
    }
    let (list, path) = rest.split_once('/').unwrap_or((rest, ""));
    if list.is_empty() {
        return Err(bad("the URL has no host"));
    }
    let default_port = match scheme.kind {
        Kind::Sentinel => SENTINEL_PORT,
        _ => REDIS_PORT,
    };
    let mut addrs = Vec::new();
    // Hosts are named by their place in the list, never quoted: a mistyped URL may have put
    // part of a password there.
    for (n, host) in list.split(',').enumerate() {
        let n = n + 1;
        if host.is_empty() {
            return Err(bad(format!(
                "host {n} of the URL's list is empty: expected host[:port] joined by `,`"
            )));
        }
        // Each host checked as one URL's authority: IPv6 literals, ports and
        // percent-encoding are url's to judge, not a hand-written parser's.
        let one = url::Url::parse(&format!("redis://{host}"))
            .map_err(|e| bad(format!("host {n} of the URL's list: {e}")))?;
        let name = match one.host() {
            Some(url::Host::Ipv6(ip)) => format!("[{ip}]"),
            Some(h) => h.to_string(),
            None => return Err(bad(format!("host {n} of the URL's list has no name"))),
        };
        if one.path() != "/" && !one.path().is_empty()
            || one.query().is_some()
            || !one.username().is_empty()
        {
            return Err(bad(format!(
                "host {n} of the URL's list is not host[:port]"
            )));
        }
        addrs.push(format!("{name}:{}", one.port().unwrap_or(default_port)));
    }
    let (username, password) = match userinfo {
        Some(info) => {
            let (user, password) = match info.split_once(':') {
                Some((user, password)) => (user, Some(password)),
                None => (info, None),
            };
            (
                Some(decode(user)?).filter(|u| !u.is_empty()),
                password.map(decode).transpose()?,
            )
        }
        None => (None, None),
    };
    let (master, db) = match scheme.kind {
        Kind::Cluster => {
            if !matches!(path, "" | "0") {
                return Err(bad(
                    "a Redis Cluster has one database (0): the URL takes no path",
                ));
            }
            (None, 0)
        }
        Kind::Sentinel => {
            let mut segments = path.split('/');
            let master = decode(segments.next().unwrap_or(""))?;
            if master.is_empty() {
                return Err(bad(
                    "a sentinel URL names the master: redis+sentinel://host:26379/mymaster",
                ));
            }
            let db = match segments.next() {
                None | Some("") => 0,
                Some(db) => db.parse::<i64>().ok().filter(|d| *d >= 0).ok_or_else(|| {
                    bad("the database in the URL's path (/master/db) is not a number")
                })?,
            };
            if segments.next().is_some_and(|s| !s.is_empty()) {
                return Err(bad("a sentinel URL's path is /master[/db], nothing more"));
            }
            (Some(master), db)
        }
        Kind::Single => unreachable!("single-node URLs are parsed by url::Url"),
    };
    // A cluster's nodes take the user and password (encoded again by url, whatever the
    // original left unencoded); sentinels are asked without.
    let mut nodes = Vec::with_capacity(addrs.len());
    for addr in &addrs {
        let mut node = url::Url::parse(&format!("{}://{addr}", scheme.node()))
            .map_err(|e| bad(format!("a host of the URL's list: {e}")))?;
        if scheme.kind == Kind::Cluster {
            let refused = || bad("the URL's user or password cannot be carried to the nodes");
            if let Some(user) = &username {
                node.set_username(user).map_err(|()| refused())?;
            }
            if let Some(password) = &password {
                node.set_password(Some(password)).map_err(|()| refused())?;
            }
        }
        node.set_query(query);
        nodes.push(node.to_string());
    }
    Ok(Hosts {
        nodes,
        master,
        db,
        username,
        password,
    })
}

/// `rest` (a URL after `scheme://`) split at its last `@` into the user information and what
/// follows; no `@`, no user information.
pub(crate) fn split_userinfo(rest: &str) -> (Option<&str>, &str) {
    match rest.rsplit_once('@') {
        Some((userinfo, after)) => (Some(userinfo), after),
        None => (None, rest),
    }
}

/// A connection to a single node or to a cluster; commands and pipelines go to whichever it
/// is (a cluster routes them by their key's hash slot).
#[derive(Clone)]
pub enum AnyConnection {
    /// One node's multiplexed connection.
    Node(redis::aio::MultiplexedConnection),
    /// A cluster connection: multiplexed too, one per node behind it.
    Cluster(redis::cluster_async::ClusterConnection),
}

impl redis::aio::ConnectionLike for AnyConnection {
    fn req_packed_command<'a>(
        &'a mut self,
        cmd: &'a redis::Cmd,
    ) -> redis::RedisFuture<'a, redis::Value> {
        match self {
            AnyConnection::Node(c) => c.req_packed_command(cmd),
            AnyConnection::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        cmd: &'a redis::Pipeline,
        offset: usize,
        count: usize,
    ) -> redis::RedisFuture<'a, Vec<redis::Value>> {
        match self {
            AnyConnection::Node(c) => c.req_packed_commands(cmd, offset, count),
            AnyConnection::Cluster(c) => c.req_packed_commands(cmd, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            AnyConnection::Node(c) => c.get_db(),
            AnyConnection::Cluster(c) => c.get_db(),
        }
    }
}

/// A cluster client for `hosts` with our timeouts, re-sending nothing: redis-rs's own retries
/// re-send a command whose connection dropped after it was written (a second stream entry
/// for one publish) and re-send a whole pipeline when one reply redirects, so they are off and
/// we retry only what Redis answered without running (see `publisher.rs`).
pub(crate) fn cluster_client(
    hosts: &Hosts,
    connect: std::time::Duration,
) -> redis::RedisResult<redis::cluster::ClusterClient> {
    redis::cluster::ClusterClient::builder(hosts.nodes.clone())
        .connection_timeout(connect)
        .retries(0)
        .build()
}

/// A sentinel client for `hosts`, asking for the master named in the URL with the Redis
/// nodes' credentials and database.
pub(crate) fn sentinel_client(
    hosts: &Hosts,
    scheme: Scheme,
) -> redis::RedisResult<redis::sentinel::SentinelClient> {
    let mut info = redis::RedisConnectionInfo::default().set_db(hosts.db);
    if let Some(user) = &hosts.username {
        info = info.set_username(user);
    }
    if let Some(password) = &hosts.password {
        info = info.set_password(password);
    }
    let mut node =
        redis::sentinel::SentinelNodeConnectionInfo::default().set_redis_connection_info(info);
    if scheme.tls {
        node = node.set_tls_mode(redis::TlsMode::Secure);
    }
    redis::sentinel::SentinelClient::build(
        hosts.nodes.clone(),
        hosts.master.clone().unwrap_or_default(),
        Some(node),
        redis::sentinel::SentinelServerType::Master,
    )
}
