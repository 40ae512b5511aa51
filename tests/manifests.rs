//! The deployment files against the code, so the two cannot drift apart. No container engine or
//! cluster runs here; instead, every container the Kubernetes manifests (`deploy/k8s/`) and the
//! compose profile `shop` (`docker-compose.yml`) define gets exactly the environment those files
//! give it (ConfigMap and Secret references resolved from the files, YAML merge keys applied),
//! and the code must accept it:
//!
//! - every variable set is one the code reads ([`VARS`]);
//! - the role's configuration parses ([`Env::from_lookup`]) and its listen address resolves to
//!   its own port on every interface;
//! - the addresses of the other roles name a Service (or compose service) that exists, on the
//!   port that role listens on, and so do the probes and Prometheus' scrape targets;
//! - the gateway gets the token key and no other container does; the committed placeholder key
//!   is refused, so a manifest applied unchanged cannot run with a key everybody has read.
//!
//! The metric names that `alerts.yml` and the Grafana dashboard use are names the code
//! registers, and every panel's query parses (promtool, when installed).
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may panic with a message

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde::Deserialize;
use serde_yaml_ng::Value;
use shop::config::{
    Env, JWT_KEY_VAR, LISTEN_VAR, Role, Style, VARS, encode_hex, jwt_key_from,
};
use shop::supervisor::GRACE;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

/// Every YAML document of `text`, merge keys (`<<: *anchor`) applied.
fn documents(text: &str, file: &str) -> Vec<Value> {
    serde_yaml_ng::Deserializer::from_str(text)
        .map(|document| {
            let mut value = Value::deserialize(document)
                .unwrap_or_else(|e| panic!("{file}: not YAML: {e}"));
            value.apply_merge().unwrap_or_else(|e| panic!("{file}: {e}"));
            value
        })
        .filter(|value| !value.is_null())
        .collect()
}

fn text<'v>(value: &'v Value, what: &str) -> &'v str {
    value.as_str().unwrap_or_else(|| panic!("{what} is not a string: {value:?}"))
}

fn strings(value: &Value, what: &str) -> Vec<String> {
    value
        .as_sequence()
        .unwrap_or_else(|| panic!("{what} is not a list: {value:?}"))
        .iter()
        .map(|item| text(item, what).to_owned())
        .collect()
}

/// A key the manifests set to the committed placeholder, and what stands in for it here: what
/// `kubectl create secret` or the shell running compose gives the container instead.
fn fresh_key() -> String {
    encode_hex(&[0x5a; 32])
}

/// One container of the shop as a deployment file defines it.
#[derive(Debug)]
struct Container {
    /// Where it is defined: `deploy/k8s/saga.yaml: Deployment saga`.
    origin: String,
    /// Its arguments to `shop`.
    args: Vec<String>,
    /// Its environment, exactly as given: variable -> value.
    env: BTreeMap<String, String>,
    /// The container port its probes and its Service point at, when it serves HTTP.
    port: Option<u16>,
}

impl Container {
    fn lookup(&self) -> impl Fn(&str) -> Option<String> + '_ {
        |var| self.env.get(var).cloned()
    }

    /// The role `shop role <name>` runs, or `None` for another command (`setup`).
    fn role(&self) -> Option<Role> {
        match self.args.as_slice() {
            [role, name] if role == "role" => Some(
                Role::parse(name)
                    .unwrap_or_else(|| panic!("{}: no role {name:?}", self.origin)),
            ),
            _ => None,
        }
    }
}

/// What one set of deployment files defines: the shop's containers, and the names other
/// containers reach, with their ports (Services, or compose services).
struct Deployment {
    containers: Vec<Container>,
    reachable: BTreeMap<String, BTreeSet<u16>>,
}

// --- Kubernetes ------------------------------------------------------------------------------

fn kubernetes() -> Deployment {
    let dir = root().join("deploy/k8s");
    let mut objects = Vec::new();
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|x| x == "yaml"))
        .collect();
    files.sort();
    for path in &files {
        let file =
            format!("deploy/k8s/{}", path.file_name().unwrap().to_string_lossy());
        for object in documents(&read(path), &file) {
            objects.push((file.clone(), object));
        }
    }
    let named = |kind: &str, name: &str| -> &Value {
        let found = objects.iter().find(|(_, o)| {
            o["kind"].as_str() == Some(kind)
                && o["metadata"]["name"].as_str() == Some(name)
        });
        &found.unwrap_or_else(|| panic!("no {kind} {name} in deploy/k8s")).1
    };
    // ConfigMap data and Secret stringData: both plain strings in the files.
    let entries = |kind: &str, name: &str| -> BTreeMap<String, String> {
        let field = if kind == "Secret" { "stringData" } else { "data" };
        let object = named(kind, name);
        assert!(
            object.get("data").is_none() || kind == "ConfigMap",
            "Secret {name}: keep values in stringData, so they are read as written"
        );
        object[field]
            .as_mapping()
            .unwrap_or_else(|| panic!("{kind} {name} has no {field}"))
            .iter()
            .map(|(k, v)| {
                (text(k, "a key").to_owned(), text(v, "a value").to_owned())
            })
            .collect()
    };

    let mut reachable: BTreeMap<String, BTreeSet<u16>> = BTreeMap::new();
    let mut containers = Vec::new();
    for (file, object) in &objects {
        let kind = text(&object["kind"], "kind");
        let name = text(&object["metadata"]["name"], "metadata.name");
        assert_eq!(
            object["metadata"]["namespace"].as_str(),
            (kind != "Namespace").then_some("shop"),
            "{file}: {kind} {name} is not in the namespace shop"
        );
        match kind {
            "Service" => {
                for port in object["spec"]["ports"].as_sequence().unwrap() {
                    let port = port["port"].as_u64().unwrap();
                    reachable
                        .entry(name.to_owned())
                        .or_default()
                        .insert(u16::try_from(port).unwrap());
                }
            }
            "Deployment" | "Job" => {
                let origin = format!("{file}: {kind} {name}");
                let pod = &object["spec"]["template"]["spec"];
                let list = pod["containers"].as_sequence().unwrap();
                assert_eq!(list.len(), 1, "{origin}: one container per pod");
                let container = &list[0];
                let mut env = BTreeMap::new();
                for source in
                    container["envFrom"].as_sequence().into_iter().flatten()
                {
                    let (kind, reference) = match (
                        source.get("configMapRef"),
                        source.get("secretRef"),
                    ) {
                        (Some(reference), None) => ("ConfigMap", reference),
                        (None, Some(reference)) => ("Secret", reference),
                        _ => panic!("{origin}: envFrom {source:?}"),
                    };
                    env.extend(entries(
                        kind,
                        text(&reference["name"], "envFrom name"),
                    ));
                }
                for var in container["env"].as_sequence().into_iter().flatten() {
                    let key = text(&var["name"], "env name").to_owned();
                    let value = if let Some(value) = var.get("value") {
                        text(value, &key).to_owned()
                    } else {
                        let from = &var["valueFrom"];
                        let (kind, reference) = match (
                            from.get("configMapKeyRef"),
                            from.get("secretKeyRef"),
                        ) {
                            (Some(reference), None) => ("ConfigMap", reference),
                            (None, Some(reference)) => ("Secret", reference),
                            _ => panic!("{origin}: {key} comes from {from:?}"),
                        };
                        let map =
                            entries(kind, text(&reference["name"], "ref name"));
                        let wanted = text(&reference["key"], "ref key");
                        // Kubernetes would not start the container: CreateContainerConfigError.
                        map.get(wanted).cloned().unwrap_or_else(|| {
                            panic!("{origin}: {key} refers to {kind} key {wanted}, absent")
                        })
                    };
                    env.insert(key, value);
                }
                let port = container["ports"].as_sequence().map(|ports| {
                    assert_eq!(ports.len(), 1, "{origin}: one port");
                    u16::try_from(ports[0]["containerPort"].as_u64().unwrap())
                        .unwrap()
                });
                let args = strings(&container["args"], "args");
                if kind == "Deployment" {
                    check_pod(&origin, pod, container, port);
                }
                containers.push(Container { origin, args, env, port });
            }
            _ => {}
        }
    }
    Deployment { containers, reachable }
}

/// What a Deployment's pod must have for the role to live under Kubernetes: the probes on the
/// right endpoints, a grace period longer than the drain, and no root.
fn check_pod(origin: &str, pod: &Value, container: &Value, port: Option<u16>) {
    assert!(port.is_some(), "{origin}: no container port");
    for (probe, path) in
        [("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")]
    {
        let get = &container[probe]["httpGet"];
        assert_eq!(get["path"].as_str(), Some(path), "{origin}: {probe}");
        assert_eq!(get["port"].as_str(), Some("http"), "{origin}: {probe} port");
    }
    assert_eq!(container["ports"][0]["name"].as_str(), Some("http"), "{origin}");
    let pause =
        container["lifecycle"]["preStop"]["sleep"]["seconds"].as_u64().unwrap_or(0);
    let grace = pod["terminationGracePeriodSeconds"].as_u64().unwrap_or(30);
    assert!(
        grace > GRACE.as_secs() + pause,
        "{origin}: {grace} s of grace do not cover the {pause} s pause and the {} s drain",
        GRACE.as_secs()
    );
    assert_eq!(
        pod["securityContext"]["runAsNonRoot"].as_bool(),
        Some(true),
        "{origin}"
    );
    let requests = &container["resources"]["requests"];
    assert!(
        requests.get("cpu").is_some() && requests.get("memory").is_some(),
        "{origin}"
    );
    assert!(container["resources"]["limits"].get("memory").is_some(), "{origin}");
}

// --- compose ---------------------------------------------------------------------------------

/// The compose profile `shop`: the containers of the image `shop:dev`. A variable without a
/// value is taken from the shell that runs compose; `shell` says what that shell holds.
fn compose(shell: &BTreeMap<&str, String>) -> Deployment {
    let file = "docker-compose.yml";
    let mut docs = documents(&read(&root().join(file)), file);
    assert_eq!(docs.len(), 1);
    let compose = docs.remove(0);
    let services = compose["services"].as_mapping().unwrap();
    let mut reachable: BTreeMap<String, BTreeSet<u16>> = BTreeMap::new();
    let mut containers = Vec::new();
    for (name, service) in services {
        let name = text(name, "a service name");
        // Containers on compose's network reach each other by service name, on any port.
        reachable.entry(name.to_owned()).or_default();
        if service["image"].as_str() != Some("shop:dev") {
            continue;
        }
        let origin = format!("{file}: service {name}");
        let profiles = strings(&service["profiles"], "profiles");
        assert_eq!(profiles, ["shop"], "{origin}: only in the profile shop");
        let mut env = BTreeMap::new();
        for (key, value) in service["environment"].as_mapping().unwrap() {
            let key = text(key, "a variable");
            let value = match value {
                Value::Null => match shell.get(key) {
                    Some(value) => value.clone(),
                    None => continue,
                },
                Value::String(value) => value.clone(),
                other => panic!("{origin}: {key} is {other:?}; quote it"),
            };
            assert!(!value.contains('$'), "{origin}: {key} interpolates: {value}");
            env.insert(key.to_owned(), value);
        }
        let args = strings(&service["command"], "command");
        // The image exposes every role's port; a role listens on its own.
        let port = env
            .get(LISTEN_VAR)
            .map(|listen| listen.parse::<SocketAddr>().unwrap().port());
        if let Some(port) = port {
            reachable.entry(name.to_owned()).or_default().insert(port);
        }
        containers.push(Container { origin, args, env, port });
    }
    Deployment { containers, reachable }
}

// --- what every deployment must give the code ------------------------------------------------

/// The checks shared by both deployments; returns the roles found.
fn accepted_by_the_code(deployment: &Deployment) -> BTreeSet<Role> {
    let known: BTreeSet<&str> = VARS.into_iter().collect();
    let mut roles = BTreeSet::new();
    for container in &deployment.containers {
        let origin = &container.origin;
        for var in container.env.keys() {
            assert!(
                known.contains(var.as_str()),
                "{origin}: sets {var}, which the code never reads (see config::VARS)"
            );
            // A container's stdin is empty: a role told to stop at its end would stop at once.
            assert_ne!(
                var.as_str(),
                shop::probe::SUPERVISED_VAR,
                "{origin}: only the supervisor sets {var}"
            );
        }
        let env = Env::from_lookup(container.lookup()).unwrap_or_else(|e| {
            panic!("{origin}: the configuration is refused: {e}")
        });
        // Inside a container, the loopback defaults reach nothing.
        for (var, value) in [
            ("DATABASE_URL", &env.database_url),
            ("AMQP_ADDR", &env.amqp),
            ("KAFKA_BROKERS", &env.kafka),
        ] {
            let needed = match container.role() {
                Some(Role::Gateway) => false,
                Some(_) | None => match env.style {
                    Style::Orchestration => var != "KAFKA_BROKERS",
                    Style::Choreography => var != "AMQP_ADDR",
                },
            };
            if needed {
                assert!(
                    container.env.contains_key(var),
                    "{origin}: {var} is not set"
                );
                assert_reachable(deployment, origin, var, value);
            }
        }
        let role = container.role();
        let gets_key = container.env.contains_key(JWT_KEY_VAR);
        assert_eq!(
            gets_key,
            role == Some(Role::Gateway),
            "{origin}: only the gateway holds the token key"
        );
        let Some(role) = role else {
            assert_eq!(container.args, ["setup"], "{origin}: an unknown command");
            continue;
        };
        assert!(roles.insert(role), "{origin}: {role} is defined twice");
        assert!(
            env.style.roles().contains(&role),
            "{origin}: {role} is not in its style"
        );
        let port = role.default_port();
        assert_eq!(container.port, Some(port), "{origin}: {role} serves on {port}");
        let listen = env
            .listen_addr(role)
            .unwrap_or_else(|e| panic!("{origin}: no address to listen on: {e}"));
        assert_eq!(listen, SocketAddr::from(([0, 0, 0, 0], port)), "{origin}");
        for other in env.style.roles() {
            let var = other.addr_var();
            assert!(container.env.contains_key(&var), "{origin}: {var} is not set");
            assert_eq!(
                env.addr(other),
                format!("{other}:{}", other.default_port()),
                "{origin}: {other} is reached by its name, on its port"
            );
            assert_reachable(deployment, origin, &var, &env.addr(other));
        }
        if role == Role::Gateway {
            jwt_key_from(container.lookup()).unwrap_or_else(|e| {
                panic!("{origin}: the token key is refused: {e}")
            });
        }
    }
    roles
}

/// The roles the deployment files run: the orchestrated shop's (the style they set).
fn deployed() -> BTreeSet<Role> {
    Style::Orchestration.roles().into_iter().collect()
}

/// `value`'s host (a URL's or a `host:port`'s) is a name the deployment serves, on that port.
fn assert_reachable(deployment: &Deployment, origin: &str, var: &str, value: &str) {
    let authority = value.split_once("://").map_or(value, |(_, rest)| rest);
    let authority = authority.split(['/', ',']).next().unwrap_or_default();
    let authority = authority.rsplit_once('@').map_or(authority, |(_, host)| host);
    let (host, port) = authority
        .rsplit_once(':')
        .unwrap_or_else(|| panic!("{origin}: {var}={value} names no port"));
    let port: u16 = port.parse().unwrap();
    let ports = deployment.reachable.get(host);
    assert!(ports.is_some(), "{origin}: {var} names {host}, which nothing serves");
    // Brokers are outside the manifests (and compose publishes no port list for them).
    let ours = Role::ALL.iter().any(|r| r.name() == host);
    if ours {
        assert!(
            ports.is_some_and(|p| p.contains(&port)),
            "{origin}: {var} reaches {host} on {port}, which it does not serve"
        );
    }
}

#[test]
fn the_kubernetes_manifests_give_each_role_an_environment_the_code_accepts() {
    let mut deployment = kubernetes();
    // The brokers are the cluster's own (the README says so): stand-ins for their Services.
    for broker in ["postgres", "rabbitmq", "kafka"] {
        deployment.reachable.entry(broker.to_owned()).or_default();
    }
    // The committed Secret holds a placeholder, which the gateway must refuse...
    let gateway = deployment
        .containers
        .iter_mut()
        .find(|c| c.role() == Some(Role::Gateway))
        .expect("a gateway Deployment");
    let Err(refused) = jwt_key_from(gateway.lookup()) else {
        panic!(
            "the committed Secret holds a usable token key: keep a placeholder the gateway refuses"
        )
    };
    assert!(refused.to_string().contains(JWT_KEY_VAR), "{refused}");
    // ...and accept the key `kubectl create secret` gives it instead.
    gateway.env.insert(JWT_KEY_VAR.to_owned(), fresh_key());

    let roles = accepted_by_the_code(&deployment);
    assert_eq!(roles, deployed(), "a Deployment per role");
    for role in deployed() {
        assert!(
            deployment.reachable[role.name()].contains(&role.default_port()),
            "the Service {role} does not serve {}",
            role.default_port()
        );
    }
    assert!(
        deployment.containers.iter().any(|c| c.args == ["setup"]),
        "the setup Job is missing"
    );
}

#[test]
fn the_compose_profile_gives_each_role_an_environment_the_code_accepts() {
    let shell = BTreeMap::from([(JWT_KEY_VAR, fresh_key())]);
    let deployment = compose(&shell);
    let roles = accepted_by_the_code(&deployment);
    assert_eq!(roles, deployed(), "a service per role");

    // From a shell without the key, the gateway gets none and refuses to start, saying why.
    let bare = compose(&BTreeMap::new());
    let gateway =
        bare.containers.iter().find(|c| c.role() == Some(Role::Gateway)).unwrap();
    let refused = jwt_key_from(gateway.lookup()).unwrap_err().to_string();
    assert!(refused.contains("openssl rand -hex 32"), "{refused}");

    // Kafka tells the shop's containers an address they can reach.
    let compose_text = read(&root().join("docker-compose.yml"));
    let kafka = &deployment.containers[0].env["KAFKA_BROKERS"];
    assert!(
        compose_text.contains(&format!("DOCKER://{kafka}")),
        "the kafka service does not advertise {kafka} to containers"
    );
}

#[test]
fn prometheus_scrapes_every_role_where_compose_runs_it() {
    let file = "deploy/prometheus/prometheus.yml";
    let config = documents(&read(&root().join(file)), file).remove(0);
    let jobs = config["scrape_configs"].as_sequence().unwrap();
    let shop = jobs.iter().find(|j| j["job_name"].as_str() == Some("shop")).unwrap();
    let mut scraped = BTreeMap::new();
    for group in shop["static_configs"].as_sequence().unwrap() {
        let service =
            text(&group["labels"]["service"], "the service label").to_owned();
        for target in strings(&group["targets"], "targets") {
            scraped.insert(service.clone(), target);
        }
    }
    let expected: BTreeMap<String, String> = deployed()
        .into_iter()
        .map(|r| (r.name().to_owned(), format!("{r}:{}", r.default_port())))
        .collect();
    assert_eq!(scraped, expected);
    let shell = BTreeMap::from([(JWT_KEY_VAR, fresh_key())]);
    let compose = compose(&shell);
    for (service, target) in &scraped {
        assert_reachable(&compose, file, service, target);
    }
}

// --- metric names and queries ----------------------------------------------------------------

/// The metric names the code registers: every `"shop_..."` string literal under `src/`.
fn registered_metrics() -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut dirs = vec![root().join("src")];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                dirs.push(path);
            } else if path.extension().is_some_and(|x| x == "rs") {
                for quoted in read(&path).split('"').skip(1).step_by(2) {
                    let name = |c: char| c.is_ascii_lowercase() || c == '_';
                    if quoted.starts_with("shop_") && quoted.chars().all(name) {
                        names.insert(quoted.to_owned());
                    }
                }
            }
        }
    }
    names
}

/// The `shop_*` metric names a query uses.
fn metrics_in(query: &str) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    let mut rest = query;
    while let Some(at) = rest.find("shop_") {
        let word: String = rest[at..]
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        rest = &rest[at + word.len()..];
        found.insert(word);
    }
    found
}

/// Whether the code exports `name`: as registered, or with the suffix the exposition format
/// adds to a counter (`_total`) or a histogram (`_bucket`, `_sum`, `_count`).
fn exported(registered: &BTreeSet<String>, name: &str) -> bool {
    registered.contains(name)
        || ["_total", "_bucket", "_sum", "_count"].iter().any(|suffix| {
            name.strip_suffix(suffix).is_some_and(|n| registered.contains(n))
        })
}

/// Every query of the dashboard, with Grafana's `$__rate_interval` as Prometheus would get it.
fn dashboard_queries() -> Vec<(String, String)> {
    let file = root().join("deploy/grafana/dashboards/shop.json");
    let dashboard: serde_json::Value = serde_json::from_str(&read(&file)).unwrap();
    let mut queries = Vec::new();
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().into_iter().flatten() {
            let expr = target["expr"].as_str().unwrap();
            let title = panel["title"].as_str().unwrap().to_owned();
            queries.push((title, expr.replace("$__rate_interval", "1m")));
        }
    }
    queries
}

#[test]
fn alerts_and_dashboard_use_only_metrics_the_code_exports() {
    let registered = registered_metrics();
    assert!(registered.contains("shop_http_requests"), "{registered:?}");
    let alerts = read(&root().join("deploy/prometheus/alerts.yml"));
    let mut used = metrics_in(&alerts);
    let queries = dashboard_queries();
    assert!(queries.len() >= 10, "the dashboard has {} queries", queries.len());
    for (title, query) in &queries {
        assert!(!query.contains('$'), "panel {title:?}: a variable in {query}");
        used.extend(metrics_in(query));
    }
    for name in &used {
        assert!(
            exported(&registered, name),
            "{name} is not a metric the code exports"
        );
    }
    // Each family the alerts watch has a panel too.
    let on_dashboard: BTreeSet<String> =
        queries.iter().flat_map(|(_, q)| metrics_in(q)).collect();
    for name in metrics_in(&alerts) {
        assert!(on_dashboard.contains(&name), "no panel shows {name}");
    }
}

/// Every panel's query parses as PromQL: written as recording rules to a scratch file that
/// `promtool check rules` reads. promtool comes with Debian's `prometheus` package, which
/// `cargo xtask brokers up` installs.
#[test]
fn every_dashboard_query_parses() {
    let promtool_found = std::env::var_os("PATH").is_some_and(|paths| {
        std::env::split_paths(&paths).any(|dir| dir.join("promtool").is_file())
    });
    if !promtool_found {
        let why = "promtool is not installed (`cargo xtask brokers up` installs it)";
        assert!(!infra::brokers_required(), "REQUIRE_BROKERS is set but {why}");
        eprintln!("SKIPPED: {why}");
        return;
    }
    let mut rules = String::from("groups:\n  - name: dashboard\n    rules:\n");
    for (i, (_, query)) in dashboard_queries().iter().enumerate() {
        let quoted = serde_json::to_string(query).unwrap();
        rules.push_str(&format!(
            "      - record: panel_{i}\n        expr: {quoted}\n"
        ));
    }
    let path = std::env::temp_dir()
        .join(format!("shop-dashboard-queries-{}.yml", std::process::id()));
    std::fs::write(&path, rules).unwrap();
    let out = Command::new("promtool").arg("check").arg("rules").arg(&path).output();
    std::fs::remove_file(&path).unwrap();
    let out = out.unwrap();
    assert!(
        out.status.success(),
        "a dashboard query does not parse:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

// --- who may connect to whom -----------------------------------------------------------------

/// A label selector as the shop's policies write them: `matchLabels`, and `matchExpressions` with
/// `In`.
fn selects(selector: &Value, labels: &BTreeMap<String, String>) -> bool {
    let wanted = selector["matchLabels"].as_mapping().into_iter().flatten();
    let labelled = wanted.into_iter().all(|(key, value)| {
        labels.get(text(key, "label")).map(String::as_str) == value.as_str()
    });
    let expressions =
        selector["matchExpressions"].as_sequence().into_iter().flatten();
    labelled
        && expressions.into_iter().all(|expression| {
            assert_eq!(text(&expression["operator"], "operator"), "In");
            let key = text(&expression["key"], "key");
            let values = strings(&expression["values"], "values");
            labels.get(key).is_some_and(|label| values.contains(label))
        })
}

/// A pod that opens a connection: its namespace's labels, and its own if it is in `shop`.
struct Caller {
    namespace: BTreeMap<String, String>,
    pod: Option<BTreeMap<String, String>>,
}

/// Whether `policies` let `caller` connect to a pod labelled `callee` on `port`: a pod no
/// policy selects takes anything; a selected one, only what one of its rules allows.
fn may_connect(
    policies: &[Value],
    caller: &Caller,
    callee: &BTreeMap<String, String>,
    port: u16,
) -> bool {
    let selecting: Vec<&Value> = policies
        .iter()
        .filter(|p| selects(&p["spec"]["podSelector"], callee))
        .collect();
    if selecting.is_empty() {
        return true;
    }
    let rules = selecting
        .iter()
        .flat_map(|p| p["spec"]["ingress"].as_sequence().into_iter().flatten());
    rules.into_iter().any(|rule| {
        let on_port = rule["ports"].as_sequence().is_none_or(|ports| {
            ports.iter().any(|p| p["port"].as_u64() == Some(u64::from(port)))
        });
        let from = rule["from"].as_sequence().is_none_or(|peers| {
            peers.iter().any(|peer| {
                match (peer.get("podSelector"), peer.get("namespaceSelector")) {
                    (Some(pods), None) => {
                        caller.pod.as_ref().is_some_and(|pod| selects(pods, pod))
                    }
                    (None, Some(namespaces)) => {
                        selects(namespaces, &caller.namespace)
                    }
                    other => {
                        panic!("a peer the shop's policies do not use: {other:?}")
                    }
                }
            })
        });
        on_port && from
    })
}

#[test]
fn network_policies_let_through_the_calls_the_code_makes_and_nothing_else() {
    let dir = root().join("deploy/k8s");
    let (mut policies, mut pods) = (vec![], BTreeMap::new());
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|x| x != "yaml") {
            continue;
        }
        let file = path.display().to_string();
        for object in documents(&read(&path), &file) {
            match object["kind"].as_str() {
                Some("NetworkPolicy") => policies.push(object),
                Some("Deployment") => {
                    let labels = &object["spec"]["template"]["metadata"]["labels"];
                    let labels: BTreeMap<String, String> =
                        serde_yaml_ng::from_value(labels.clone()).unwrap();
                    pods.insert(
                        labels["app.kubernetes.io/component"].clone(),
                        labels,
                    );
                }
                _ => {}
            }
        }
    }
    assert!(!policies.is_empty(), "no NetworkPolicy in deploy/k8s");
    let namespace = |name: &str| {
        BTreeMap::from([("kubernetes.io/metadata.name".to_owned(), name.to_owned())])
    };
    let in_shop = |component: &str| Caller {
        namespace: namespace("shop"),
        pod: Some(pods[component].clone()),
    };
    let outside = Caller { namespace: namespace("elsewhere"), pod: None };
    let prometheus = Caller { namespace: namespace("monitoring"), pod: None };
    let role = |component: &str| {
        let role = Role::parse(component).unwrap();
        (pods[component].clone(), role.default_port())
    };
    // What the code calls, in either style: the intake, and orders' and payments' reads.
    let called = [Style::Orchestration, Style::Choreography]
        .map(|style| style.intake().name().to_owned())
        .into_iter()
        .chain(["orders".to_owned(), "payments".to_owned()])
        .collect::<BTreeSet<_>>();
    let (gateway, gateway_port) = role("gateway");
    assert!(
        may_connect(&policies, &outside, &gateway, gateway_port),
        "clients reach the gateway"
    );
    for component in pods.keys() {
        let (pod, port) = role(component);
        assert!(
            may_connect(&policies, &prometheus, &pod, port),
            "Prometheus scrapes {component}"
        );
        if component == "gateway" {
            continue;
        }
        assert_eq!(
            may_connect(&policies, &in_shop("gateway"), &pod, port),
            called.contains(component),
            "the gateway and {component}"
        );
        assert!(
            !may_connect(&policies, &outside, &pod, port),
            "outside to {component}"
        );
        for other in pods.keys().filter(|other| *other != "gateway") {
            assert!(
                !may_connect(&policies, &in_shop(other), &pod, port),
                "{other} to {component}: no such call"
            );
        }
    }
}
