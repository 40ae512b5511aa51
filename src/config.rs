//! What each process of the shop is, and the configuration it reads from its environment: the
//! same surface a container or a Kubernetes manifest gives it, nothing read from files or flags.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use gateway::Secret;

use crate::telemetry::{LOG_FORMAT_VAR, LogFormat};
use orchestration::participant::Names;
use shop_domain::Service;

/// One process of the shop. Every role runs from the same binary (`shop role <name>`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Role {
    /// A participant of the checkout saga: consumes its command queue on RabbitMQ and keeps its
    /// state in its own PostgreSQL schema.
    Participant(Service),
    /// The saga orchestrator: takes checkouts over HTTP, logs every decision in PostgreSQL and
    /// sends the participants their commands.
    Saga,
    /// The public edge: verifies tokens, limits each client, forwards to the saga.
    Gateway,
    /// Tells each customer how their checkout ended and serves the live page (WebSocket): from
    /// every event of the choreographed shop, from the saga's announced endings in the
    /// orchestrated one.
    Notifications,
}

impl Role {
    /// Every role, in the order the supervisor starts them: the participants first (so a command
    /// finds its consumer), then the saga and the notifications, then the edge that lets traffic
    /// in.
    pub const ALL: [Role; 7] = [
        Role::Participant(Service::Inventory),
        Role::Participant(Service::Payments),
        Role::Participant(Service::Shipping),
        Role::Participant(Service::Orders),
        Role::Saga,
        Role::Notifications,
        Role::Gateway,
    ];

    /// The role's name: on the command line, in log prefixes, in `--kill`.
    pub fn name(self) -> &'static str {
        match self {
            Role::Participant(service) => service.name(),
            Role::Saga => "saga",
            Role::Gateway => "gateway",
            Role::Notifications => "notifications",
        }
    }

    /// The role a name stands for.
    pub fn parse(name: &str) -> Option<Role> {
        Role::ALL.into_iter().find(|r| r.name() == name)
    }

    /// The documented port: the gateway on 8080, the saga on 8090, the participants on 8091 to
    /// 8094, the notifications on 8095. Each serves `/healthz` and `/readyz` there; the saga and
    /// the gateway their API too, the notifications the live page.
    pub fn default_port(self) -> u16 {
        match self {
            Role::Gateway => 8080,
            Role::Saga => 8090,
            Role::Participant(Service::Inventory) => 8091,
            Role::Participant(Service::Payments) => 8092,
            Role::Participant(Service::Shipping) => 8093,
            Role::Participant(Service::Orders) => 8094,
            Role::Notifications => 8095,
        }
    }

    /// The environment variable that holds the role's address: `SHOP_GATEWAY_ADDR`, ...
    pub fn addr_var(self) -> String {
        format!("SHOP_{}_ADDR", self.name().to_uppercase())
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// How the checkout is coordinated: the same shop, two ways.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Style {
    /// The saga service tells each participant what to do over RabbitMQ and logs every decision
    /// (the orchestration chapter).
    Orchestration,
    /// Nobody runs the checkout: each service reacts to the others' events on Kafka, with an
    /// outbox and an inbox each (the choreography chapter). No saga process.
    Choreography,
}

impl Style {
    /// The style's name, as `SHOP_STYLE` and `--style` spell it.
    pub fn name(self) -> &'static str {
        match self {
            Style::Orchestration => "orchestration",
            Style::Choreography => "choreography",
        }
    }

    /// The style a name stands for.
    pub fn parse(name: &str) -> Option<Style> {
        [Style::Orchestration, Style::Choreography]
            .into_iter()
            .find(|s| s.name() == name)
    }

    /// The roles a shop of this style runs, in the order they start: the saga only where it
    /// orchestrates.
    pub fn roles(self) -> Vec<Role> {
        match self {
            Style::Orchestration => Role::ALL.to_vec(),
            Style::Choreography => {
                Role::ALL.into_iter().filter(|r| *r != Role::Saga).collect()
            }
        }
    }

    /// The role that takes checkouts behind the gateway: the saga service, or the orders
    /// service when nobody orchestrates.
    pub fn intake(self) -> Role {
        match self {
            Style::Orchestration => Role::Saga,
            Style::Choreography => Role::Participant(Service::Orders),
        }
    }
}

/// The variable that chooses the [`Style`]: `SHOP_STYLE`, default `orchestration`.
pub const STYLE_VAR: &str = "SHOP_STYLE";

/// A configuration a process cannot start with: the variable and what is wrong with it.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The variable is set but does not parse.
    #[error("{var}={value:?} is not {expected}")]
    Invalid {
        /// The variable's name.
        var: String,
        /// What it holds.
        value: String,
        /// What it should hold.
        expected: &'static str,
    },
    /// A variable without a safe default is not set.
    #[error("{0} is required: {1}")]
    Missing(&'static str, &'static str),
}

/// The variable with the gateway's token key, hex-encoded, at least 32 bytes. It has no default:
/// a key shipped in the code would be a key everybody knows.
pub const JWT_KEY_VAR: &str = "SHOP_JWT_KEY";

/// The variable with the run's name prefix (queues and schemas): `SHOP_PREFIX`, default `shop`.
pub const PREFIX_VAR: &str = "SHOP_PREFIX";

/// Where a process binds when its own `SHOP_<ROLE>_ADDR` is a name, not an IP address, or lists
/// several replicas.
pub const LISTEN_VAR: &str = "SHOP_LISTEN_ADDR";

/// Which of its role's replicas this process is, from 1 (the default): the saga's replicas name
/// their orchestrators by it, so a replica that restarts takes back its own sagas.
pub const REPLICA_VAR: &str = "SHOP_REPLICA";

/// The most replicas one role may list.
pub const MAX_REPLICAS: usize = 16;

/// The directory with the shop's certificates: `ca.pem`, and `<role>.pem` with `<role>.key`
/// for each role ([`crate::identity::issue`] writes them). When it is set, payments serves its
/// gRPC reads over mutual TLS, to the gateway only; unset (the default), over plain HTTP/2 on
/// its one port, as on a laptop.
pub const TLS_DIR_VAR: &str = "SHOP_TLS_DIR";

/// Where payments serves gRPC over mutual TLS when [`TLS_DIR_VAR`] is set: one address per
/// payments replica, default `127.0.0.1:8096` for one.
pub const PAYMENTS_TLS_VAR: &str = "SHOP_PAYMENTS_TLS_ADDR";

/// Mutual TLS between the gateway and payments.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Tls {
    /// `SHOP_TLS_DIR`.
    pub dir: std::path::PathBuf,
    /// `SHOP_PAYMENTS_TLS_ADDR`: one address per payments replica, separated by commas.
    pub payments: String,
}

/// The Kafka-API brokers, `host:port[,host:port...]` (the choreographed services).
pub const KAFKA_VAR: &str = "KAFKA_BROKERS";

/// The PostgreSQL URL (every role but the gateway).
pub const DATABASE_VAR: &str = "DATABASE_URL";

/// The RabbitMQ URI (the orchestrated saga and participants).
pub const AMQP_VAR: &str = "AMQP_ADDR";

/// The log filter, read by the logging setup every program of the package starts with
/// ([`crate::telemetry::init`]), not by [`Env`].
pub const LOG_VAR: &str = "RUST_LOG";

/// Where spans are exported (OTLP), read by the same setup, not by [`Env`].
pub const OTLP_VAR: &str = trace_context::setup::OTLP_ENDPOINT;

/// Every variable the shop's own code reads: what [`Env::from_lookup`] and [`jwt_key_from`] ask
/// for, and the logging setup's. The deployment files set nothing else (`tests/manifests.rs`
/// holds them to it), so a typo or a leftover cannot hide there. The OpenTelemetry SDK reads more
/// of its own `OTEL_*` variables (service name, headers, sampling); they are not listed here.
pub const VARS: [&str; 21] = [
    OTLP_VAR,
    crate::probe::SUPERVISED_VAR,
    LOG_FORMAT_VAR,
    STYLE_VAR,
    PREFIX_VAR,
    LISTEN_VAR,
    REPLICA_VAR,
    TLS_DIR_VAR,
    PAYMENTS_TLS_VAR,
    JWT_KEY_VAR,
    KAFKA_VAR,
    DATABASE_VAR,
    AMQP_VAR,
    LOG_VAR,
    "SHOP_GATEWAY_ADDR",
    "SHOP_SAGA_ADDR",
    "SHOP_INVENTORY_ADDR",
    "SHOP_PAYMENTS_ADDR",
    "SHOP_SHIPPING_ADDR",
    "SHOP_ORDERS_ADDR",
    "SHOP_NOTIFICATIONS_ADDR",
];

/// `host:port` with a port number and a host of letters, digits, `.`, `-` or an IP address.
fn is_host_port(value: &str) -> bool {
    if value.parse::<SocketAddr>().is_ok() {
        return true;
    }
    let Some((host, port)) = value.rsplit_once(':') else { return false };
    let name = |c: char| c.is_ascii_alphanumeric() || c == '.' || c == '-';
    port.parse::<u16>().is_ok_and(|p| p > 0)
        && !host.is_empty()
        && host.chars().all(name)
}

/// One address, or several separated by commas (no more than [`MAX_REPLICAS`], none twice).
fn is_replica_list(value: &str) -> bool {
    let listed: Vec<&str> = value.split(',').map(str::trim).collect();
    let distinct: std::collections::BTreeSet<&&str> = listed.iter().collect();
    listed.len() <= MAX_REPLICAS
        && distinct.len() == listed.len()
        && listed.iter().all(|a| is_host_port(a))
}

/// Everything a process of the shop reads from its environment.
#[derive(Clone, Debug)]
pub struct Env {
    /// How the checkout is coordinated.
    pub style: Style,
    /// `KAFKA_BROKERS`: the Kafka-API broker (choreography only).
    pub kafka: String,
    /// Queue and schema names: one prefix per shop, so two shops on one broker never meet.
    pub names: Names,
    /// `DATABASE_URL`: PostgreSQL, where each service has its own schema.
    pub database_url: String,
    /// `AMQP_ADDR`: RabbitMQ.
    pub amqp: String,
    /// Where every role is reached (`SHOP_<ROLE>_ADDR`, `host:port`), so each can find the
    /// others: `127.0.0.1:8090` on one machine, `saga:8090` between containers or pods. A
    /// role that runs as several replicas lists each one's, separated by commas
    /// (`127.0.0.1:8090,127.0.0.1:8190`): the list is the shop's discovery.
    pub addrs: BTreeMap<Role, String>,
    /// `SHOP_LISTEN_ADDR`: where this process binds, when its own address is a name other
    /// processes resolve (`saga:8090`) rather than an IP it can bind (`0.0.0.0:8090` then), or
    /// when its role lists several replicas.
    pub listen: Option<SocketAddr>,
    /// `SHOP_REPLICA`: which of its role's replicas this process is, from 1.
    pub replica: usize,
    /// `SHOP_TLS_DIR` and `SHOP_PAYMENTS_TLS_ADDR`: mutual TLS between the gateway and
    /// payments, when the directory is set.
    pub tls: Option<Tls>,
    /// `LOG_FORMAT`: log lines for people (the default) or JSON with trace ids.
    pub log_format: LogFormat,
}

impl Env {
    /// Reads this process's environment; an unset address is the role's documented port on
    /// 127.0.0.1.
    pub fn from_env() -> Result<Env, ConfigError> {
        Env::from_lookup(|var| std::env::var(var).ok())
    }

    /// Reads the configuration from `lookup`, which answers a variable's value or `None` when it
    /// is unset: [`Env::from_env`] passes the process environment, a test the environment a
    /// manifest gives a container. Every variable it asks for is in [`VARS`]. An empty value
    /// counts as unset (a blank broker address too). A broker address `lookup` leaves unset falls back to `infra`'s default
    /// for it (which `infra` reads from the process environment, where it is unset too when
    /// `lookup` is the process environment).
    pub fn from_lookup(
        lookup: impl Fn(&str) -> Option<String>,
    ) -> Result<Env, ConfigError> {
        let read = |var: &str| lookup(var).filter(|v| !v.is_empty());
        // As `infra` reads them: blank is unset.
        let broker = |var: &str| lookup(var).filter(|v| !v.trim().is_empty());
        let prefix = read(PREFIX_VAR).unwrap_or_else(|| "shop".to_owned());
        let valid = |c: char| c.is_ascii_alphanumeric() || c == '_';
        if !prefix.chars().all(valid) || prefix.is_empty() || prefix.len() > 40 {
            let expected = "1 to 40 letters, digits or _";
            return Err(invalid(PREFIX_VAR, &prefix, expected));
        }
        let style = match read(STYLE_VAR) {
            None => Style::Orchestration,
            Some(name) => Style::parse(&name).ok_or_else(|| {
                invalid(STYLE_VAR, &name, "orchestration or choreography")
            })?,
        };
        let mut addrs = BTreeMap::new();
        for role in Role::ALL {
            let var = role.addr_var();
            let addr = match read(&var) {
                Some(value) if is_replica_list(&value) => value,
                Some(value) => {
                    let expected = "host:port, like 127.0.0.1:8090 or saga:8090, or \
                                    several of them separated by commas (one per replica)";
                    return Err(invalid(&var, &value, expected));
                }
                None => format!("127.0.0.1:{}", role.default_port()),
            };
            addrs.insert(role, addr);
        }
        let log_format = LogFormat::parse(read(LOG_FORMAT_VAR).as_deref())
            .ok_or_else(|| {
                let value = read(LOG_FORMAT_VAR).unwrap_or_default();
                invalid(LOG_FORMAT_VAR, &value, "json or human")
            })?;
        let listen = match read(LISTEN_VAR) {
            None => None,
            Some(value) => Some(value.parse().map_err(|_| {
                invalid(
                    LISTEN_VAR,
                    &value,
                    "an IP address and port, like 0.0.0.0:8090",
                )
            })?),
        };
        let replica = match read(REPLICA_VAR) {
            None => 1,
            Some(value) => value
                .parse()
                .ok()
                .filter(|n| (1..=MAX_REPLICAS).contains(n))
                .ok_or_else(|| {
                    invalid(REPLICA_VAR, &value, "a number from 1 to 16")
                })?,
        };
        let payments = Role::Participant(Service::Payments);
        let tls = match read(TLS_DIR_VAR) {
            None => None,
            Some(dir) => {
                let listed = read(PAYMENTS_TLS_VAR)
                    .unwrap_or_else(|| "127.0.0.1:8096".to_owned());
                let count = listed.split(',').count();
                let replicas =
                    addrs.get(&payments).map_or(1, |a| a.split(',').count());
                if !is_replica_list(&listed) || count != replicas {
                    let expected = "one host:port per payments replica, separated by commas, \
                                    as many as SHOP_PAYMENTS_ADDR lists";
                    return Err(invalid(PAYMENTS_TLS_VAR, &listed, expected));
                }
                Some(Tls { dir: dir.into(), payments: listed })
            }
        };
        Ok(Env {
            style,
            kafka: broker(KAFKA_VAR).unwrap_or_else(infra::kafka_brokers),
            names: Names::new(&prefix),
            database_url: broker(DATABASE_VAR).unwrap_or_else(infra::database_url),
            amqp: broker(AMQP_VAR).unwrap_or_else(infra::amqp_addr),
            addrs,
            listen,
            replica,
            tls,
            log_format,
        })
    }

    /// Where each payments replica serves gRPC over mutual TLS; none without TLS.
    pub fn payments_tls(&self) -> Vec<String> {
        let Some(tls) = &self.tls else { return vec![] };
        tls.payments.split(',').map(|a| a.trim().to_owned()).collect()
    }

    /// Where each replica of `role` is reached, `host:port`, in the order its variable lists
    /// them: one address for a role that runs once.
    pub fn replicas(&self, role: Role) -> Vec<String> {
        // Every role is in the map: `from_env` and `Env::vars` fill all of them.
        let listed = self
            .addrs
            .get(&role)
            .cloned()
            .unwrap_or_else(|| format!("127.0.0.1:{}", role.default_port()));
        listed.split(',').map(|a| a.trim().to_owned()).collect()
    }

    /// Where `role` is reached, `host:port`: its first replica's address.
    pub fn addr(&self, role: Role) -> String {
        let mut replicas = self.replicas(role);
        replicas.swap_remove(0)
    }

    /// Where this process, playing `role`, binds: `SHOP_LISTEN_ADDR` if set, else its own
    /// address, which must then be one IP address.
    pub fn listen_addr(&self, role: Role) -> Result<SocketAddr, ConfigError> {
        if let Some(listen) = self.listen {
            return Ok(listen);
        }
        let own = self.addrs.get(&role).cloned().unwrap_or_else(|| self.addr(role));
        if self.replicas(role).len() > 1 {
            let expected = "one address: with several replicas listed, set \
                            SHOP_LISTEN_ADDR to this one's (and SHOP_REPLICA to its number)";
            return Err(invalid(&role.addr_var(), &own, expected));
        }
        own.parse().map_err(|_| {
            let expected = "an IP address to listen on; or set SHOP_LISTEN_ADDR, e.g. 0.0.0.0:8090";
            invalid(&role.addr_var(), &own, expected)
        })
    }

    /// `http://` and the role's address (its first replica's).
    pub fn url(&self, role: Role) -> String {
        format!("http://{}", self.addr(role))
    }

    /// `http://` and each replica's address.
    pub fn urls(&self, role: Role) -> Vec<String> {
        self.replicas(role).into_iter().map(|a| format!("http://{a}")).collect()
    }

    /// The variables a child process gets, so that its `from_env` reads this configuration.
    /// `SHOP_LISTEN_ADDR` is not among them: each child binds its own address.
    pub fn vars(&self) -> Vec<(String, String)> {
        let mut vars = vec![
            (STYLE_VAR.to_owned(), self.style.name().to_owned()),
            (KAFKA_VAR.to_owned(), self.kafka.clone()),
            (PREFIX_VAR.to_owned(), self.names.prefix.clone()),
            (DATABASE_VAR.to_owned(), self.database_url.clone()),
            (AMQP_VAR.to_owned(), self.amqp.clone()),
            (LOG_FORMAT_VAR.to_owned(), self.log_format.name().to_owned()),
        ];
        for (role, addr) in &self.addrs {
            vars.push((role.addr_var(), addr.clone()));
        }
        if let Some(tls) = &self.tls {
            vars.push((TLS_DIR_VAR.to_owned(), tls.dir.display().to_string()));
            vars.push((PAYMENTS_TLS_VAR.to_owned(), tls.payments.clone()));
        }
        vars
    }
}

fn invalid(var: &str, value: &str, expected: &'static str) -> ConfigError {
    ConfigError::Invalid { var: var.to_owned(), value: value.to_owned(), expected }
}

/// The gateway's token key from [`JWT_KEY_VAR`] in this process's environment: required, hex,
/// at least 32 bytes.
pub fn jwt_key() -> Result<Secret, ConfigError> {
    jwt_key_from(|var| std::env::var(var).ok())
}

/// The gateway's token key from [`JWT_KEY_VAR`] as `lookup` answers it (see
/// [`Env::from_lookup`]).
pub fn jwt_key_from(
    lookup: impl Fn(&str) -> Option<String>,
) -> Result<Secret, ConfigError> {
    let Some(hex) = lookup(JWT_KEY_VAR).filter(|v| !v.is_empty()) else {
        let why = "64 or more hex digits (generate one: `openssl rand -hex 32`)";
        return Err(ConfigError::Missing(JWT_KEY_VAR, why));
    };
    let expected = "hex digits encoding 32 bytes or more";
    let bytes = decode_hex(&hex)
        .ok_or_else(|| invalid(JWT_KEY_VAR, "<redacted>", expected))?;
    Secret::new(bytes).map_err(|_| invalid(JWT_KEY_VAR, "<redacted>", expected))
}

/// Lower-case hex of `bytes`, as [`JWT_KEY_VAR`] holds a key.
pub fn encode_hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn decode_hex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| {
            text.get(i..i + 2).and_then(|pair| u8::from_str_radix(pair, 16).ok())
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_round_trip_through_their_names_and_ports_are_distinct() {
        let mut ports = std::collections::HashSet::new();
        for role in Role::ALL {
            assert_eq!(Role::parse(role.name()), Some(role));
            assert!(ports.insert(role.default_port()), "{role} shares a port");
        }
        assert_eq!(Role::parse("warehouse"), None);
        assert_eq!(Role::Saga.addr_var(), "SHOP_SAGA_ADDR");
    }

    #[test]
    fn hex_keys_decode_and_bad_ones_are_refused() {
        let key = [0xab_u8; 32];
        assert_eq!(decode_hex(&encode_hex(&key)), Some(key.to_vec()));
        assert_eq!(decode_hex("abc"), None);
        assert_eq!(decode_hex("zz"), None);
    }

    #[test]
    fn an_address_may_be_a_name_but_only_an_ip_address_is_bound() {
        for good in [
            "127.0.0.1:8090",
            "saga:8090",
            "saga.shop.svc.cluster.local:80",
            "[::1]:8090",
        ] {
            assert!(is_host_port(good), "{good}");
        }
        for bad in [
            "saga",
            "saga:",
            ":8090",
            "saga:0",
            "saga:http",
            "sa ga:8090",
            "saga:70000",
        ] {
            assert!(!is_host_port(bad), "{bad}");
        }
        let mut env = Env {
            style: Style::Orchestration,
            kafka: String::new(),
            names: Names::new("t"),
            database_url: String::new(),
            amqp: String::new(),
            addrs: BTreeMap::from([(Role::Saga, "saga:8090".to_owned())]),
            listen: None,
            replica: 1,
            tls: None,
            log_format: LogFormat::Human,
        };
        let error = env.listen_addr(Role::Saga).unwrap_err().to_string();
        assert!(
            error.contains("SHOP_SAGA_ADDR") && error.contains("SHOP_LISTEN_ADDR"),
            "{error}"
        );
        env.listen = Some("0.0.0.0:8090".parse().unwrap());
        assert_eq!(env.listen_addr(Role::Saga).unwrap().port(), 8090);
        assert_eq!(env.url(Role::Saga), "http://saga:8090");
    }

    #[test]
    fn a_role_may_list_its_replicas_and_each_binds_its_own() {
        let listed = "127.0.0.1:8090, 127.0.0.1:8190";
        let lookup = |var: &str| match var {
            "SHOP_SAGA_ADDR" => Some(listed.to_owned()),
            _ => None,
        };
        let mut env = Env::from_lookup(lookup).unwrap();
        assert_eq!(env.replicas(Role::Saga), ["127.0.0.1:8090", "127.0.0.1:8190"]);
        assert_eq!(env.urls(Role::Saga)[1], "http://127.0.0.1:8190");
        assert_eq!(env.addr(Role::Saga), "127.0.0.1:8090");
        assert_eq!(env.replicas(Role::Gateway), ["127.0.0.1:8080"]);
        assert_eq!(env.replica, 1);
        // Which one is this process? Only SHOP_LISTEN_ADDR can say.
        let error = env.listen_addr(Role::Saga).unwrap_err().to_string();
        assert!(error.contains("SHOP_LISTEN_ADDR"), "{error}");
        env.listen = Some("127.0.0.1:8190".parse().unwrap());
        assert_eq!(env.listen_addr(Role::Saga).unwrap().port(), 8190);
        for bad in ["127.0.0.1:8090,127.0.0.1:8090", "127.0.0.1:8090,", "a:1,b"] {
            let lookup =
                |var: &str| (var == "SHOP_SAGA_ADDR").then(|| bad.to_owned());
            let error = Env::from_lookup(lookup).unwrap_err().to_string();
            assert!(error.contains("one per replica"), "{bad}: {error}");
        }
        let second = |var: &str| (var == REPLICA_VAR).then(|| "2".to_owned());
        assert_eq!(Env::from_lookup(second).unwrap().replica, 2);
        for bad in ["0", "17", "two"] {
            let lookup = |var: &str| (var == REPLICA_VAR).then(|| bad.to_owned());
            let error = Env::from_lookup(lookup).unwrap_err().to_string();
            assert!(error.contains("SHOP_REPLICA"), "{bad}: {error}");
        }
    }

    #[test]
    fn mutual_tls_is_off_unless_its_directory_is_set() {
        assert_eq!(Env::from_lookup(|_| None).unwrap().tls, None);
        let on = |var: &str| (var == TLS_DIR_VAR).then(|| "/run/tls".to_owned());
        let env = Env::from_lookup(on).unwrap();
        assert_eq!(env.payments_tls(), ["127.0.0.1:8096"]);
        let vars = env.vars();
        let passed = |var: &str| {
            vars.iter().find(|(name, _)| name == var).map(|(_, v)| v.clone())
        };
        assert_eq!(Env::from_lookup(passed).unwrap().tls, env.tls);
        // Two payments replicas need two TLS addresses.
        let two = |var: &str| match var {
            TLS_DIR_VAR => Some("/run/tls".to_owned()),
            "SHOP_PAYMENTS_ADDR" => Some("127.0.0.1:8092,127.0.0.1:8192".to_owned()),
            _ => None,
        };
        let error = Env::from_lookup(two).unwrap_err().to_string();
        assert!(error.contains("SHOP_PAYMENTS_TLS_ADDR"), "{error}");
    }

    #[test]
    fn vars_lists_exactly_what_the_configuration_asks_for() {
        let asked = std::cell::RefCell::new(std::collections::BTreeSet::new());
        let lookup = |var: &str| {
            asked.borrow_mut().insert(var.to_owned());
            match var {
                "SHOP_SAGA_ADDR" => Some("saga:8090".to_owned()),
                "SHOP_LISTEN_ADDR" => Some("0.0.0.0:8090".to_owned()),
                "DATABASE_URL" => Some("postgres://db/shop".to_owned()),
                TLS_DIR_VAR => Some("/run/shop/tls".to_owned()),
                JWT_KEY_VAR => Some(encode_hex(&[7; 32])),
                _ => None,
            }
        };
        let env = Env::from_lookup(lookup).unwrap();
        assert_eq!(env.addr(Role::Saga), "saga:8090");
        assert_eq!(env.listen_addr(Role::Saga).unwrap().port(), 8090);
        assert_eq!(env.database_url, "postgres://db/shop");
        assert_eq!(env.addr(Role::Gateway), "127.0.0.1:8080");
        assert!(jwt_key_from(lookup).is_ok());
        let mut expected: std::collections::BTreeSet<String> =
            VARS.iter().map(|v| v.to_string()).collect();
        expected.remove(LOG_VAR);
        expected.remove(OTLP_VAR);
        expected.remove(crate::probe::SUPERVISED_VAR);
        assert_eq!(*asked.borrow(), expected);

        let bad = |var: &str| (var == "SHOP_SAGA_ADDR").then(|| "saga".to_owned());
        let error = Env::from_lookup(bad).unwrap_err().to_string();
        assert!(error.contains("SHOP_SAGA_ADDR"), "{error}");
        assert!(jwt_key_from(|_| None).is_err());
        let short = |_: &str| Some(encode_hex(&[7; 16]));
        assert!(jwt_key_from(short).is_err());
    }
}
