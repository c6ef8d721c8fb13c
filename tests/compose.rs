//! The docker compose demo (`examples/compose/`) and the `Dockerfile`, checked without a
//! Docker engine (there is none on our machines or in CI):
//!
//! * `docker compose config` (Docker's compose plugin) or `docker-compose config` (Debian's
//!   `docker-compose` package, which `scripts/test` installs) must accept the compose file;
//! * `examples/compose/envoy.yaml` must be exactly what `portcullis envoy-config` makes of the
//!   compose `portcullis.yaml` (`PORTCULLIS_BLESS=1 cargo test --test compose` rewrites it);
//! * `envoy --mode validate` must accept every Envoy config the stack runs, with the
//!   certificates that the stack's own `init.sh` makes;
//! * `init.sh` must make secrets portcullis accepts, idempotently;
//! * the Dockerfile must build from sources that exist and the build context keeps, with a
//!   Rust new enough for Cargo.toml, into a runtime image that can run the binary;
//! * the settings that must agree across services (Grafana, Keycloak, portcullis, Envoy) do.

use std::collections::BTreeSet;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;
use testkit::{portcullis_bin, repo, run, temp_dir};

fn compose_dir() -> PathBuf {
    repo().join("examples/compose")
}

fn read(path: &Path) -> String {
    fs::read_to_string(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

/// A YAML file as JSON values (easier to walk).
fn yaml(path: &Path) -> Value {
    serde_yaml_ng::from_str(&read(path))
        .unwrap_or_else(|e| panic!("{} is not YAML: {e}", path.display()))
}

fn compose() -> Value {
    yaml(&compose_dir().join("docker-compose.yaml"))
}

fn service<'a>(compose: &'a Value, name: &str) -> &'a Value {
    let s = &compose["services"][name];
    assert!(s.is_object(), "docker-compose.yaml has no service {name}");
    s
}

/// The list of strings at `v` (a compose `command`, `volumes`, ...).
fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .map(|a| {
            a.iter()
                .map(|x| x.as_str().expect("a string").to_string())
                .collect()
        })
        .unwrap_or_default()
}

/// `run` and assert success; returns stdout.
fn ok(cmd: &mut Command) -> String {
    let desc = format!("{cmd:?}");
    let out = run(cmd);
    assert!(
        out.status.success(),
        "{desc} failed ({}):\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

// ---------------------------------------------------------------------------------------
// docker compose config
// ---------------------------------------------------------------------------------------

/// The compose CLI to validate with: Docker's plugin if this docker client has it, else
/// Debian's `docker-compose`. Neither is a failure: the test must not pass by skipping.
fn compose_cli() -> Vec<&'static str> {
    let works = |cmd: &[&str]| {
        Command::new(cmd[0])
            .args(&cmd[1..])
            .output()
            .is_ok_and(|o| o.status.success())
    };
    if works(&["docker", "compose", "version"]) {
        vec!["docker", "compose"]
    } else if works(&["docker-compose", "version"]) {
        vec!["docker-compose"]
    } else {
        panic!(
            "no compose validator: neither `docker compose` (Docker's compose plugin) nor \
             `docker-compose` works here. Run scripts/test, which installs Debian's \
             docker-compose package (apt-get install --no-install-recommends docker-compose)."
        )
    }
}

#[test]
#[ignore = "tier compose: needs docker-compose (or Docker's compose plugin); run scripts/test"]
fn docker_compose_accepts_the_compose_file() {
    let cli = compose_cli();
    let rendered = ok(Command::new(cli[0])
        .args(&cli[1..])
        .current_dir(compose_dir())
        .args(["-f", "docker-compose.yaml", "config"]));
    let resolved: Value = serde_yaml_ng::from_str(&rendered)
        .unwrap_or_else(|e| panic!("{cli:?} config printed no YAML ({e}):\n{rendered}"));
    let services: BTreeSet<&str> = resolved["services"]
        .as_object()
        .expect("services")
        .keys()
        .map(String::as_str)
        .collect();
    let want: BTreeSet<&str> = [
        "cockpit",
        "envoy",
        "grafana",
        "init",
        "jwks-tls",
        "keycloak",
        "portcullis",
        "redis",
    ]
    .into();
    assert_eq!(services, want, "{cli:?} config");
    // Both builds resolve to the repository root, where the Dockerfile is.
    for name in ["init", "portcullis"] {
        let context = resolved["services"][name]["build"]["context"]
            .as_str()
            .unwrap_or_else(|| panic!("{name} has a build context"));
        assert_eq!(
            fs::canonicalize(context).unwrap(),
            fs::canonicalize(repo()).unwrap(),
            "{name}'s build context"
        );
    }
}

// ---------------------------------------------------------------------------------------
// envoy.yaml is generated, and Envoy accepts every Envoy config of the stack
// ---------------------------------------------------------------------------------------

/// Runs `init.sh` into `dir/out` with this build's portcullis, as the `init` service does.
fn run_init(dir: &Path) -> PathBuf {
    let out = dir.join("out");
    ok(Command::new("sh")
        .arg(compose_dir().join("init.sh"))
        .arg(&out)
        .env("PORTCULLIS", portcullis_bin()));
    out
}

/// The compose `portcullis.yaml` in a temp tree, with the secrets init.sh made beside it
/// (the config's relative `secrets/` is the init's `portcullis/` volume).
fn compose_config_tree() -> (PathBuf, PathBuf) {
    let dir = temp_dir("compose");
    let out = run_init(&dir);
    let config = compose_config_in(&dir);
    std::os::unix::fs::symlink(out.join("portcullis"), config.with_file_name("secrets")).unwrap();
    (dir, config)
}

/// The compose `portcullis.yaml` copied into `dir/etc-portcullis/`, without its secrets.
fn compose_config_in(dir: &Path) -> PathBuf {
    let etc = dir.join("etc-portcullis");
    fs::create_dir_all(&etc).unwrap();
    fs::copy(
        compose_dir().join("portcullis.yaml"),
        etc.join("portcullis.yaml"),
    )
    .unwrap();
    etc.join("portcullis.yaml")
}

/// The arguments the compose stack's Envoy bootstrap is generated with.
const ENVOY_CONFIG_ARGS: [&str; 10] = [
    "--portcullis-host",
    "portcullis",
    "--listen",
    "0.0.0.0:8443",
    "--admin",
    "127.0.0.1:9901",
    "--tls-cert",
    "/certs/tls.pem",
    "--tls-key",
    "/certs/tls-key.pem",
];

#[test]
fn the_compose_envoy_yaml_is_what_envoy_config_makes_of_the_compose_config() {
    // Secrets of our own where init.sh would put them: envoy-config reads only their paths,
    // and this check runs without openssl.
    let dir = temp_dir("compose");
    let config = compose_config_in(&dir);
    testkit::write_secrets(config.parent().unwrap());
    // init.sh makes the Redis password too.
    fs::write(
        config.with_file_name("secrets").join("redis_password"),
        "not-a-real-redis-password\n",
    )
    .unwrap();
    let generated = ok(Command::new(portcullis_bin())
        .arg("envoy-config")
        .arg("-c")
        .arg(&config)
        .args(ENVOY_CONFIG_ARGS));
    let committed_path = compose_dir().join("envoy.yaml");
    if std::env::var_os("PORTCULLIS_BLESS").is_some() {
        fs::write(&committed_path, &generated).unwrap();
    }
    let committed = fs::read_to_string(&committed_path).unwrap_or_default();
    assert!(
        generated == committed,
        "examples/compose/envoy.yaml is stale (or missing): regenerate it with\n  \
         PORTCULLIS_BLESS=1 cargo test --test compose\n(it runs `portcullis envoy-config -c \
         examples/compose/portcullis.yaml {}`)",
        ENVOY_CONFIG_ARGS.join(" ")
    );
    // Envoy reaches portcullis by its compose service name, on the config's ports.
    let doc: Value = serde_yaml_ng::from_str(&generated).unwrap();
    let endpoints: Vec<(String, u64)> = doc["static_resources"]["clusters"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["name"].as_str().unwrap().starts_with("portcullis_"))
        .map(|c| {
            let a = &c["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]
                ["socket_address"];
            (
                a["address"].as_str().unwrap().to_string(),
                a["port_value"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        endpoints,
        [
            ("portcullis".to_string(), 9100),
            ("portcullis".to_string(), 9101)
        ]
    );
    let _ = fs::remove_dir_all(dir);
}

/// Every Envoy config a compose service runs: (service, host file, container path).
fn envoy_configs(compose: &Value) -> Vec<(String, PathBuf, String)> {
    let mut found = Vec::new();
    for (name, svc) in compose["services"].as_object().unwrap() {
        let image = svc["image"].as_str().unwrap_or_default();
        if !image.starts_with("envoyproxy/envoy") {
            continue;
        }
        let command = strings(&svc["command"]);
        let at = command
            .iter()
            .position(|a| a == "-c" || a == "--config-path")
            .unwrap_or_else(|| panic!("{name} runs Envoy without -c: {command:?}"));
        let inside = command[at + 1].clone();
        let host = strings(&svc["volumes"])
            .iter()
            .find_map(|v| {
                let mut parts = v.split(':');
                let (src, dst) = (parts.next()?, parts.next()?);
                (dst == inside)
                    .then(|| src.strip_prefix("./"))
                    .flatten()
                    .map(|s| compose_dir().join(s))
            })
            .unwrap_or_else(|| panic!("{name}: {inside} is not bind-mounted from this directory"));
        found.push((name.clone(), host, inside));
    }
    found
}

#[test]
#[ignore = "tier compose: needs Envoy and openssl (init.sh makes the certificates); run scripts/test"]
fn envoy_validates_every_envoy_config_the_compose_stack_runs() {
    testkit::tier::require_openssl();
    let compose = compose();
    let configs = envoy_configs(&compose);
    let names: Vec<&str> = configs.iter().map(|(s, _, _)| s.as_str()).collect();
    assert_eq!(names, ["envoy", "jwks-tls"], "Envoy services in the stack");

    // The certificates the stack itself makes, where the configs expect /certs.
    let dir = temp_dir("compose-envoy");
    let out = run_init(&dir);
    let certs = out.join("certs");
    for (svc, file, _) in &configs {
        assert!(
            strings(&service(&compose, svc)["volumes"]).contains(&"certs:/certs:ro".to_string()),
            "{svc} mounts the certs volume at /certs"
        );
        let text = read(file);
        assert!(
            text.contains("/certs/tls.pem"),
            "{} uses /certs/tls.pem",
            file.display()
        );
        let copy = dir.join(format!("{svc}.yaml"));
        fs::write(
            &copy,
            text.replace("/certs/", &format!("{}/", certs.display())),
        )
        .unwrap();
        if let Err(log) = testkit::envoy::validate(&copy) {
            panic!(
                "envoy --mode validate rejects {} (service {svc}):\n{log}",
                file.display()
            );
        }
    }
    let _ = fs::remove_dir_all(dir);
}

// ---------------------------------------------------------------------------------------
// init.sh
// ---------------------------------------------------------------------------------------

fn mode(path: &Path) -> u32 {
    fs::metadata(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .permissions()
        .mode()
        & 0o777
}

#[test]
#[ignore = "tier compose: needs openssl (init.sh); run scripts/test"]
fn init_makes_secrets_and_certificates_portcullis_accepts_and_keeps_them() {
    testkit::tier::require_openssl();
    let (dir, config) = compose_config_tree();
    let out = dir.join("out");
    let files = [
        "portcullis/cookie_secret",
        "portcullis/client_secret",
        "portcullis/signing_key.pem",
        "keycloak/client_secret",
        "certs/ca.pem",
        "certs/ca-key.pem",
        "certs/tls.pem",
        "certs/tls-key.pem",
        "portcullis/redis_password",
        "redis/redis.conf",
    ];
    let first: Vec<Vec<u8>> = files
        .iter()
        .map(|f| fs::read(out.join(f)).unwrap_or_else(|e| panic!("init made no {f}: {e}")))
        .collect();
    assert_eq!(
        first[1], first[3],
        "Keycloak gets the client secret portcullis uses"
    );
    for secret in [
        "portcullis/cookie_secret",
        "portcullis/client_secret",
        "portcullis/signing_key.pem",
        "keycloak/client_secret",
        "certs/ca-key.pem",
        "certs/tls-key.pem",
        "portcullis/redis_password",
        "redis/redis.conf",
    ] {
        assert_eq!(mode(&out.join(secret)), 0o600, "{secret}");
    }
    let password = String::from_utf8(first[8].clone()).unwrap();
    assert!(
        String::from_utf8_lossy(&first[9]).contains(&format!("requirepass {}", password.trim())),
        "Redis requires the password portcullis has"
    );
    assert_eq!(mode(&out.join("certs/ca.pem")), 0o644);

    let (code, stdout, stderr) = {
        let o = run(Command::new(portcullis_bin())
            .arg("check-config")
            .arg("-c")
            .arg(&config));
        (
            o.status.code(),
            String::from_utf8_lossy(&o.stdout).into_owned(),
            String::from_utf8_lossy(&o.stderr).into_owned(),
        )
    };
    assert_eq!(
        code,
        Some(0),
        "the compose portcullis.yaml with init's secrets:\n{stdout}{stderr}"
    );
    let jwks: Value = serde_json::from_str(&ok(Command::new(portcullis_bin())
        .arg("jwks")
        .arg("-c")
        .arg(&config)))
    .unwrap();
    assert_eq!(jwks["keys"].as_array().map(Vec::len), Some(1), "{jwks}");

    // The certificate chains to the CA and names every host the stack serves over TLS.
    let ca = out.join("certs/ca.pem");
    let tls = out.join("certs/tls.pem");
    ok(Command::new("openssl")
        .args(["verify", "-CAfile"])
        .arg(&ca)
        .arg(&tls));
    let sans = ok(Command::new("openssl")
        .args(["x509", "-noout", "-ext", "subjectAltName", "-in"])
        .arg(&tls));
    let portcullis = yaml(&compose_dir().join("portcullis.yaml"));
    let mut hosts = vec![host_of(portcullis["authenticate_url"].as_str().unwrap())];
    for route in portcullis["routes"].as_array().unwrap() {
        hosts.push(host_of(route["from"].as_str().unwrap()));
    }
    hosts.push("jwks-tls".into());
    for host in hosts {
        assert!(sans.contains(&format!("DNS:{host}")), "{host} in {sans}");
    }

    // A second run (docker compose up again) keeps everything.
    run_init(&dir);
    for (f, before) in files.iter().zip(&first) {
        assert_eq!(&fs::read(out.join(f)).unwrap(), before, "{f} changed");
    }
    let _ = fs::remove_dir_all(dir);
}

/// `https://host:port/...` → `host`.
fn host_of(url: &str) -> String {
    let rest = url.split("://").nth(1).expect("a URL");
    rest.split(['/', ':']).next().unwrap().to_string()
}

/// `https://host:port/...` → `host:port`.
fn authority_of(url: &str) -> String {
    let rest = url.split("://").nth(1).expect("a URL");
    rest.split('/').next().unwrap().to_string()
}

// ---------------------------------------------------------------------------------------
// Dockerfile
// ---------------------------------------------------------------------------------------

/// One instruction of a Dockerfile, as text: the keyword, and its arguments with the
/// continuation lines joined (COPY's flags as `--name=value`, exec forms as JSON arrays).
#[derive(Debug)]
struct Instruction {
    stage: usize,
    keyword: String,
    args: String,
}

/// (stages as (image, name), instructions), read with the `dockerfile-parser` crate.
fn parse_dockerfile(text: &str) -> (Vec<(String, String)>, Vec<Instruction>) {
    use dockerfile_parser::{
        BreakableStringComponent, Dockerfile, Instruction as I, ShellOrExecExpr,
    };
    let dockerfile =
        Dockerfile::parse(text).unwrap_or_else(|e| panic!("the Dockerfile does not parse: {e}"));
    let joined = |b: &dockerfile_parser::BreakableString| -> String {
        b.components
            .iter()
            .filter_map(|c| match c {
                BreakableStringComponent::String(s) => Some(s.content.trim()),
                BreakableStringComponent::Comment(_) => None,
            })
            .collect::<Vec<_>>()
            .join(" ")
    };
    let expr = |e: &ShellOrExecExpr| match e {
        ShellOrExecExpr::Shell(b) => joined(b),
        ShellOrExecExpr::Exec(a) => serde_json::to_string(
            &a.elements
                .iter()
                .map(|s| s.content.as_str())
                .collect::<Vec<_>>(),
        )
        .unwrap(),
    };
    let mut stages = Vec::new();
    let mut instructions = Vec::new();
    for stage in dockerfile.iter_stages() {
        for instruction in &stage.instructions {
            let (keyword, args) = match instruction {
                I::From(f) => {
                    let alias = f
                        .alias
                        .as_ref()
                        .map(|a| a.content.clone())
                        .unwrap_or_default();
                    stages.push((f.image.content.clone(), alias));
                    ("FROM".to_string(), f.image.content.clone())
                }
                I::Run(r) => ("RUN".to_string(), expr(&r.expr)),
                I::Entrypoint(e) => ("ENTRYPOINT".to_string(), expr(&e.expr)),
                I::Cmd(c) => ("CMD".to_string(), expr(&c.expr)),
                I::Copy(c) => {
                    let words: Vec<String> = c
                        .flags
                        .iter()
                        .map(|f| format!("--{}={}", f.name.content, f.value.content))
                        .chain(c.sources.iter().map(|s| s.content.clone()))
                        .chain([c.destination.content.clone()])
                        .collect();
                    ("COPY".to_string(), words.join(" "))
                }
                I::Misc(m) => (
                    m.instruction.content.to_ascii_uppercase(),
                    joined(&m.arguments),
                ),
                other => (format!("{other:?}"), String::new()),
            };
            instructions.push(Instruction {
                stage: stage.index,
                keyword,
                args,
            });
        }
    }
    (stages, instructions)
}

/// Whether `.dockerignore` leaves `path` (relative to the repo) in the build context.
fn kept_by_dockerignore(patterns: &[String], path: &str) -> bool {
    !patterns.iter().any(|p| {
        let p = p.trim_start_matches('/');
        if let Some(name) = p.strip_prefix("**/") {
            path.split('/').any(|c| c == name)
        } else {
            path == p || path.starts_with(&format!("{p}/"))
        }
    })
}

/// Cargo.toml, read with the `toml` crate.
fn cargo_manifest(path: &Path) -> toml::Table {
    read(path)
        .parse()
        .unwrap_or_else(|e| panic!("{} is not TOML: {e}", path.display()))
}

/// The files of the targets a manifest declares explicitly (`[[bench]]`, `[[test]]`,
/// `[[example]]`, `[[bin]]`): their `path`, else the conventional `DIR/NAME.rs`.
fn cargo_targets(cargo: &toml::Table) -> Vec<String> {
    let mut files = Vec::new();
    for (kind, dir) in [
        ("bench", "benches"),
        ("test", "tests"),
        ("example", "examples"),
        ("bin", "src/bin"),
    ] {
        for target in cargo
            .get(kind)
            .and_then(|t| t.as_array())
            .into_iter()
            .flatten()
        {
            let name = target
                .get("name")
                .and_then(|n| n.as_str())
                .unwrap_or_default();
            files.push(match target.get("path").and_then(|p| p.as_str()) {
                Some(path) => path.to_string(),
                None => format!("{dir}/{name}.rs"),
            });
        }
    }
    files
}

fn version(v: &str) -> Vec<u32> {
    v.split('.')
        .map(|n| {
            n.parse()
                .unwrap_or_else(|_| panic!("{v:?} is not a version"))
        })
        .collect()
}

#[test]
fn the_dockerfile_builds_the_binary_from_what_the_context_holds() {
    let text = read(&repo().join("Dockerfile"));
    let (stages, instructions) = parse_dockerfile(&text);
    let names: Vec<&str> = stages.iter().map(|(_, n)| n.as_str()).collect();
    assert_eq!(names, ["build", "init", "runtime"], "stages");
    let in_stage = |stage: usize, keyword: &str| -> Vec<&str> {
        instructions
            .iter()
            .filter(|i| i.stage == stage && i.keyword == keyword)
            .map(|i| i.args.as_str())
            .collect()
    };

    // The build stage's Rust is at least Cargo.toml's rust-version.
    let cargo = cargo_manifest(&repo().join("Cargo.toml"));
    let package = &cargo["package"];
    let msrv = package["rust-version"].as_str().expect("rust-version");
    let build_image = &stages[0].0;
    let tag = build_image
        .strip_prefix("rust:")
        .unwrap_or_else(|| panic!("the build stage is an official rust image: {build_image}"));
    let (rust, distro) = tag.split_once('-').expect("rust:VERSION-DISTRO");
    assert!(
        version(rust) >= version(msrv),
        "{build_image} is older than rust-version {msrv}"
    );
    // The binary links against the build image's glibc: the runtime must be the same Debian.
    let runtime_image = &stages[2].0;
    assert_eq!(
        runtime_image,
        &format!("debian:{}-slim", distro.trim_start_matches("slim-")),
        "build on {build_image}, run on the same Debian release"
    );

    // The binary the Dockerfile builds and runs is the package's.
    let package = package["name"].as_str().expect("package name");
    assert_eq!(package, "portcullis");
    assert!(
        !cargo.contains_key("bin"),
        "Cargo.toml declares [[bin]] targets: check the Dockerfile's --bin"
    );
    let build_runs = in_stage(0, "RUN").join("\n");
    assert!(
        build_runs.contains(&format!("--bin {package}"))
            && build_runs.contains(&format!("target/release/{package}"))
            && build_runs.contains("--locked"),
        "the build stage builds --bin {package} --locked: {build_runs}"
    );
    assert_eq!(
        in_stage(2, "ENTRYPOINT"),
        [format!("[\"/usr/local/bin/{package}\"]")],
        "runtime entrypoint"
    );

    // Runtime: CA certificates, and not root.
    assert!(
        in_stage(2, "RUN")
            .iter()
            .any(|r| r.contains("apt-get install") && r.contains("ca-certificates")),
        "the runtime stage installs ca-certificates"
    );
    let user = in_stage(2, "USER");
    assert!(
        matches!(user.last(), Some(u) if !u.starts_with('0') && !u.starts_with("root")),
        "the runtime stage runs as a non-root USER: {user:?}"
    );
    // The init stage has what init.sh calls.
    assert!(
        in_stage(1, "RUN")
            .iter()
            .any(|r| r.contains("apt-get install") && r.contains("openssl")),
        "the init stage installs openssl"
    );

    // Every COPY source exists and the build context keeps it; --from names an earlier stage.
    let ignore: Vec<String> = read(&repo().join(".dockerignore"))
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(String::from)
        .collect();
    for needed in ["target", ".git", ".deps"] {
        assert!(
            !kept_by_dockerignore(&ignore, needed),
            ".dockerignore keeps {needed} out of the build context"
        );
    }
    let mut sources = Vec::new();
    for copy in instructions.iter().filter(|i| i.keyword == "COPY") {
        let words: Vec<&str> = copy.args.split_whitespace().collect();
        let flags: Vec<&&str> = words.iter().filter(|w| w.starts_with("--")).collect();
        let paths: Vec<&&str> = words.iter().filter(|w| !w.starts_with("--")).collect();
        assert!(paths.len() >= 2, "COPY {}", copy.args);
        if let Some(from) = flags.iter().find_map(|f| f.strip_prefix("--from=")) {
            let earlier = stages[..copy.stage].iter().any(|(_, n)| n == from);
            assert!(earlier, "COPY --from={from}: no earlier stage of that name");
            continue;
        }
        for src in &paths[..paths.len() - 1] {
            sources.push(src.trim_start_matches("./").to_string());
        }
    }
    assert!(!sources.is_empty(), "the Dockerfile copies the sources");
    for src in &sources {
        if src == "." {
            continue;
        }
        assert!(
            repo().join(src).exists(),
            "COPY source {src} does not exist"
        );
        assert!(
            kept_by_dockerignore(&ignore, src),
            ".dockerignore drops COPY source {src}"
        );
    }
    // With `COPY . .`, what Cargo needs must survive .dockerignore, including every target
    // Cargo.toml names (cargo refuses a manifest whose [[bench]] file is missing) and every
    // workspace member with its sources and targets (cargo loads them all).
    if sources.iter().any(|s| s == ".") {
        let mut needed = vec!["Cargo.toml".to_string(), "Cargo.lock".into(), "src".into()];
        needed.extend(cargo_targets(&cargo));
        let members = cargo["workspace"]["members"]
            .as_array()
            .expect("workspace members");
        for member in members.iter().map(|m| m.as_str().expect("a member path")) {
            if member == "." {
                continue;
            }
            let manifest = cargo_manifest(&repo().join(member).join("Cargo.toml"));
            needed.push(format!("{member}/Cargo.toml"));
            needed.push(format!("{member}/src"));
            needed.extend(
                cargo_targets(&manifest)
                    .into_iter()
                    .map(|t| format!("{member}/{t}")),
            );
        }
        for path in needed {
            assert!(repo().join(&path).exists(), "{path} is missing");
            assert!(
                kept_by_dockerignore(&ignore, &path),
                ".dockerignore drops {path}, which the build needs"
            );
        }
    }
    assert!(
        sources.iter().any(|s| s == "examples/compose/init.sh") || sources.iter().any(|s| s == "."),
        "the init stage gets init.sh"
    );

    // The compose file builds these stages of this Dockerfile.
    let compose = compose();
    for (svc, target) in [("init", Some("init")), ("portcullis", None)] {
        let build = &service(&compose, svc)["build"];
        assert_eq!(build["context"], "../..", "{svc}: the repository root");
        assert_eq!(build["dockerfile"], "Dockerfile", "{svc}");
        assert_eq!(build["target"].as_str(), target, "{svc}'s build target");
    }
}

// ---------------------------------------------------------------------------------------
// What must agree across the services
// ---------------------------------------------------------------------------------------

/// The environment of a compose service as a map.
fn environment(svc: &Value) -> serde_json::Map<String, Value> {
    svc["environment"]
        .as_object()
        .cloned()
        .expect("environment as a mapping")
}

#[test]
fn grafana_keycloak_envoy_and_portcullis_agree() {
    let compose = compose();
    let portcullis = yaml(&compose_dir().join("portcullis.yaml"));
    let auth = portcullis["authenticate_url"].as_str().unwrap().to_string();
    let routes = portcullis["routes"].as_array().unwrap();
    let route = |name: &str| {
        routes
            .iter()
            .find(|r| r["name"] == name)
            .unwrap_or_else(|| panic!("portcullis.yaml has no route {name}"))
    };
    let grafana_from = route("grafana")["from"].as_str().unwrap().to_string();

    // Grafana: every [auth.jwt] setting the README documents, matching portcullis.yaml.
    let env = environment(service(&compose, "grafana"));
    let get = |k: &str| {
        env.get(k)
            .and_then(Value::as_str)
            .unwrap_or_else(|| panic!("grafana has no {k}"))
            .to_string()
    };
    assert_eq!(get("GF_AUTH_JWT_ENABLED"), "true");
    assert_eq!(
        get("GF_AUTH_JWT_HEADER_NAME"),
        portcullis["identity_header"].as_str().unwrap()
    );
    assert_eq!(get("GF_AUTH_JWT_EMAIL_CLAIM"), "email");
    assert_eq!(get("GF_AUTH_JWT_USERNAME_CLAIM"), "preferred_username");
    assert_eq!(get("GF_AUTH_JWT_AUTO_SIGN_UP"), "true");
    assert_eq!(get("GF_AUTH_JWT_ROLE_ATTRIBUTE_PATH"), "role");
    assert!(
        route("grafana")["role"]["from_groups"].is_object(),
        "the grafana route sets the role claim"
    );
    assert_eq!(get("GF_SERVER_ROOT_URL"), format!("{grafana_from}/"));
    assert_eq!(
        get("GF_AUTH_SIGNOUT_REDIRECT_URL"),
        format!("{grafana_from}/.portcullis/sign_out")
    );
    let expect: Value = serde_json::from_str(&get("GF_AUTH_JWT_EXPECT_CLAIMS")).unwrap();
    assert_eq!(expect["iss"], Value::from(auth.clone()));
    assert_eq!(expect["aud"], Value::from(authority_of(&grafana_from)));
    assert!(
        get("GF_AUTH_JWT_CACHE_TTL") == "1m",
        "Grafana caches the JWKS no longer than its max-age (60 s)"
    );
    assert!(strings(&service(&compose, "grafana")["volumes"]).contains(&"certs:/certs:ro".into()));
    assert_eq!(get("GF_AUTH_JWT_TLS_CLIENT_CA"), "/certs/ca.pem");

    // ...and its JWKS URL reaches the standalone listener through jwks-tls over https.
    let jwks_url = get("GF_AUTH_JWT_JWK_SET_URL");
    assert!(
        jwks_url.starts_with("https://"),
        "Grafana refuses http: {jwks_url}"
    );
    let (jwks_host, jwks_port) = authority_of(&jwks_url)
        .split_once(':')
        .map(|(h, p)| (h.to_string(), p.parse::<u64>().unwrap()))
        .unwrap();
    assert!(jwks_url.ends_with("/.well-known/portcullis/jwks.json"));
    service(&compose, &jwks_host);
    let sidecar = yaml(&compose_dir().join("envoy-jwks.yaml"));
    let listener = &sidecar["static_resources"]["listeners"][0];
    assert_eq!(
        listener["address"]["socket_address"]["port_value"],
        jwks_port
    );
    let upstream = &sidecar["static_resources"]["clusters"][0]["load_assignment"]["endpoints"][0]["lb_endpoints"]
        [0]["endpoint"]["address"]["socket_address"];
    let jwks_address = portcullis["server"]["jwks_address"].as_str().unwrap();
    assert_eq!(upstream["address"], "portcullis");
    assert_eq!(
        upstream["port_value"].as_u64().map(|p| p.to_string()),
        jwks_address.rsplit(':').next().map(String::from),
        "jwks-tls forwards to server.jwks_address"
    );

    // Routes go to compose services; Envoy publishes the port of every public URL.
    for r in routes {
        let to = authority_of(r["to"].as_str().unwrap());
        let host = to.split(':').next().unwrap();
        service(&compose, host);
        assert!(
            r["from"].as_str().unwrap().ends_with(":8443"),
            "{}: routes are served on Envoy's published port",
            r["name"]
        );
    }
    assert!(auth.ends_with(":8443"));
    assert!(strings(&service(&compose, "envoy")["ports"]).contains(&"8443:8443".into()));

    // Keycloak: the issuer portcullis uses, the realm, users and client it expects.
    let issuer = portcullis["idp"]["issuer"].as_str().unwrap();
    let kc = service(&compose, "keycloak");
    let kc_host = environment(kc)["KC_HOSTNAME"].as_str().unwrap().to_string();
    let realm_file = strings(&kc["volumes"])
        .iter()
        .find_map(|v| {
            v.strip_prefix("./")
                .and_then(|v| v.split(':').next())
                .map(String::from)
        })
        .expect("the realm file is mounted");
    let realm: Value = serde_json::from_str(&read(&compose_dir().join(realm_file))).unwrap();
    assert_eq!(
        issuer,
        format!("{kc_host}/realms/{}", realm["realm"].as_str().unwrap())
    );
    let kc_hostname = host_of(&kc_host);
    assert!(
        kc["networks"]["default"]["aliases"]
            .as_array()
            .unwrap()
            .contains(&Value::from(kc_hostname.clone())),
        "portcullis resolves {kc_hostname} to Keycloak on the compose network"
    );
    let kc_port = authority_of(&kc_host)
        .split(':')
        .nth(1)
        .unwrap()
        .to_string();
    assert!(
        strings(&kc["ports"]).contains(&format!("{kc_port}:8080")),
        "the browser reaches Keycloak at {kc_host}"
    );
    let client = realm["clients"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["clientId"] == portcullis["idp"]["client_id"])
        .expect("the realm has portcullis's client");
    assert_eq!(
        client["redirectUris"],
        serde_json::json!([format!("{auth}/.portcullis/oauth2/callback")])
    );
    assert_eq!(
        client["attributes"]["post.logout.redirect.uris"],
        Value::from(format!("{auth}/.portcullis/signed_out"))
    );
    assert_eq!(client["publicClient"], false);
    assert_eq!(
        client["secret"], "${PORTCULLIS_CLIENT_SECRET}",
        "the client secret comes from init's file"
    );
    let kc_command = strings(&kc["command"]).join("\n");
    assert!(
        kc_command.contains("PORTCULLIS_CLIENT_SECRET=")
            && kc_command.contains("/opt/keycloak/secrets/client_secret")
            && kc_command.contains("--import-realm"),
        "{kc_command}"
    );
    let groups_claim = portcullis["idp"]["groups_claim"].as_str().unwrap();
    assert!(
        client["protocolMappers"]
            .as_array()
            .unwrap()
            .iter()
            .any(|m| {
                m["protocolMapper"] == "oidc-group-membership-mapper"
                    && m["config"]["claim.name"] == groups_claim
                    && m["config"]["id.token.claim"] == "true"
                    && m["config"]["full.path"] == "false"
            }),
        "a group mapper puts `{groups_claim}` in the ID token"
    );
    let users = realm["users"].as_array().unwrap();
    let user = |name: &str| {
        users
            .iter()
            .find(|u| u["username"] == name)
            .unwrap_or_else(|| panic!("the realm has no user {name}"))
    };
    for (name, email, groups) in [
        ("alice", "alice@example.com", serde_json::json!(["/admins"])),
        ("bob", "bob@example.com", serde_json::json!([])),
    ] {
        let u = user(name);
        assert_eq!(u["email"], email);
        assert_eq!(u["emailVerified"], true);
        assert_eq!(u["enabled"], true);
        assert_eq!(u["groups"], groups, "{name}");
        assert_eq!(u["credentials"][0]["value"], name, "{name}'s password");
        assert_eq!(u["credentials"][0]["temporary"], false);
    }
    let admins = route("cockpit")["policy"]["groups"].clone();
    assert_eq!(
        admins,
        serde_json::json!(["admins"]),
        "cockpit is for admins"
    );

    // portcullis's secrets volume is where its config's relative secrets/ points.
    let p = service(&compose, "portcullis");
    // Two replicas, sharing sessions in the redis service.
    assert_eq!(p["deploy"]["replicas"], 2);
    let store = &portcullis["session_store"]["redis"];
    assert_eq!(store["url"], "redis://redis:6379");
    assert_eq!(store["password_file"], "secrets/redis_password");
    let redis = service(&compose, "redis");
    assert!(strings(&redis["volumes"]).contains(&"redis-secrets:/etc/redis-secrets:ro".into()));
    assert!(
        strings(&service(&compose, "init")["volumes"]).contains(&"redis-secrets:/out/redis".into())
    );
    let volumes = strings(&p["volumes"]);
    assert!(volumes.contains(&"./portcullis.yaml:/etc/portcullis/portcullis.yaml:ro".into()));
    assert!(volumes.contains(&"portcullis-secrets:/etc/portcullis/secrets".into()));
    assert_eq!(
        strings(&p["command"]),
        ["serve", "-c", "/etc/portcullis/portcullis.yaml"]
    );
    assert!(
        strings(&service(&compose, "init")["volumes"])
            .contains(&"portcullis-secrets:/out/portcullis".into())
    );
}

#[test]
fn the_grafana_ini_example_has_the_settings_the_compose_stack_uses() {
    let compose = compose();
    let env = environment(service(&compose, "grafana"));
    let ini = read(&repo().join("examples/grafana/grafana.ini"));
    let mut section = String::new();
    let mut settings = Vec::new();
    for line in ini.lines().map(str::trim) {
        if line.is_empty() || line.starts_with(';') || line.starts_with('#') {
            continue;
        }
        if line.starts_with('[') {
            section = line.trim_matches(['[', ']']).to_string();
            continue;
        }
        let (k, v) = line.split_once('=').expect("key = value");
        settings.push((section.clone(), k.trim().to_string(), v.trim().to_string()));
    }
    assert!(!settings.is_empty());
    for (section, key, value) in &settings {
        let var = format!(
            "GF_{}_{}",
            section.replace('.', "_").to_ascii_uppercase(),
            key.to_ascii_uppercase()
        );
        assert_eq!(
            env.get(&var).and_then(Value::as_str),
            Some(value.as_str()),
            "grafana.ini [{section}] {key} and the compose {var}"
        );
    }
    assert_eq!(
        settings.len(),
        env.len(),
        "the compose Grafana and grafana.ini set the same keys"
    );
}
