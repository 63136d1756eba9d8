//! deploy/prometheus and deploy/grafana against a real Prometheus (Debian
//! `prometheus`) scraping a running `meshctl demo`:
//! - `promtool check rules` and `check config` pass;
//! - every dashboard is the JSON Grafana loads (panels with unique ids, a
//!   grid position, a Prometheus datasource from the `datasource` variable,
//!   targets with refIds and expressions);
//! - every PromQL expression of the rules and the dashboards parses and
//!   returns data (alerts: the expression parses and its signal, the part
//!   before the threshold, returns data; dashboard variables: for at least
//!   one of the values Prometheus offers);
//! - every metric an expression names is documented in docs/metrics.md.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rampart_tests::apps::get_h1;
use rampart_tests::demo::{Demo, HTTP, meshctl, route};
use rampart_tests::free_port;
use serde_json::Value;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn tool(name: &str) -> String {
    let found = Command::new("sh")
        .args(["-c", &format!("command -v {name}")])
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(
        found,
        "{name} is not installed: apt-get install prometheus (scripts/test.sh does)"
    );
    name.to_owned()
}

fn promtool(args: &[&str]) {
    let out = Command::new(tool("promtool")).args(args).output().unwrap();
    assert!(
        out.status.success(),
        "promtool {args:?}:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `a=b` query strings for Prometheus' API.
fn encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

struct Prometheus {
    child: Child,
    addr: String,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Prometheus {
    /// deploy/prometheus/prometheus.yml, with 1 s intervals and the demo's
    /// target file in `mesh`.
    fn start(dir: &Path, mesh: &Path) -> Prometheus {
        let deploy = repo().join("deploy/prometheus");
        let mut config = std::fs::read_to_string(deploy.join("prometheus.yml")).unwrap();
        for (from, to) in [
            ("scrape_interval: 5s", "scrape_interval: 1s".to_owned()),
            (
                "evaluation_interval: 5s",
                "evaluation_interval: 1s".to_owned(),
            ),
            ("refresh_interval: 5s", "refresh_interval: 1s".to_owned()),
            (
                "../../.rampart/prometheus-targets.json",
                mesh.join("prometheus-targets.json").display().to_string(),
            ),
            (
                "  - rules.yml",
                format!("  - {}", deploy.join("rules.yml").display()),
            ),
        ] {
            assert!(
                config.contains(from),
                "prometheus.yml no longer has {from:?}"
            );
            config = config.replace(from, &to);
        }
        let path = dir.join("prometheus.yml");
        std::fs::write(&path, config).unwrap();
        let addr = format!("127.0.0.1:{}", free_port());
        let child = Command::new(tool("prometheus"))
            .arg(format!("--config.file={}", path.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("tsdb").display()
            ))
            .arg(format!("--web.listen-address={addr}"))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("prometheus.log")).unwrap())
            .spawn()
            .expect("starting prometheus");
        Prometheus { child, addr }
    }

    async fn api(&self, path: &str) -> Value {
        match get_h1(&self.addr, "prometheus", path).await {
            Ok((_, body)) => serde_json::from_str(&body).unwrap_or(Value::Null),
            Err(_) => Value::Null,
        }
    }

    /// The instant query's answer: Ok(number of series) or Err(why).
    async fn query(&self, expr: &str) -> Result<usize, String> {
        let v = self
            .api(&format!("/api/v1/query?query={}", encode(expr)))
            .await;
        if v["status"] != "success" {
            return Err(format!("{}: {}", v["errorType"], v["error"]));
        }
        Ok(match &v["data"]["result"] {
            Value::Array(a) => a.len(),
            Value::Null => 0,
            _ => 1, // a scalar
        })
    }

    /// Values of `label_values(METRIC{...}, LABEL)`.
    async fn label_values(&self, query: &str) -> Vec<String> {
        let inner = query
            .strip_prefix("label_values(")
            .and_then(|q| q.strip_suffix(')'))
            .expect("label_values(SELECTOR, LABEL)");
        let (selector, label) = inner.rsplit_once(',').unwrap();
        let v = self
            .api(&format!(
                "/api/v1/label/{}/values?match[]={}",
                label.trim(),
                encode(selector.trim())
            ))
            .await;
        v["data"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|s| s.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default()
    }
}

/// An alert's expression without its final `OP NUMBER`.
fn signal(expr: &str) -> &str {
    let expr = expr.trim();
    let number = expr.trim_end_matches(|c: char| c.is_ascii_digit() || c == '.');
    let op = number.trim_end();
    for o in [">=", "<=", "==", "!=", ">", "<"] {
        if let Some(s) = op.strip_suffix(o) {
            return s.trim_end();
        }
    }
    panic!("alert expression does not end in `OP NUMBER`: {expr}");
}

/// The metric names an expression uses (identifiers followed by `{`, `[`
/// or standing alone, that are not functions, keywords or labels).
fn metric_names(expr: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut chars = expr.char_indices().peekable();
    let bytes = expr.as_bytes();
    let mut in_string = false;
    while let Some((i, c)) = chars.next() {
        if c == '"' {
            in_string = !in_string;
            continue;
        }
        if in_string || !(c.is_ascii_alphabetic() || c == '_' || c == ':') {
            continue;
        }
        if i > 0
            && (bytes[i - 1].is_ascii_alphanumeric()
                || bytes[i - 1] == b'_'
                || bytes[i - 1] == b'$')
        {
            continue;
        }
        let mut end = i + 1;
        while let Some(&(j, d)) = chars.peek() {
            if d.is_ascii_alphanumeric() || d == '_' || d == ':' {
                end = j + 1;
                chars.next();
            } else {
                break;
            }
        }
        let word = &expr[i..end];
        if word.starts_with("rampart") {
            names.insert(word.to_owned());
        }
    }
    names
}

/// `rampart_...` names in docs/metrics.md, plus the `_bucket` series of its
/// histograms.
fn documented() -> BTreeSet<String> {
    let text = std::fs::read_to_string(repo().join("docs/metrics.md")).unwrap();
    let mut names = BTreeSet::new();
    for line in text.lines().filter(|l| l.starts_with("| `rampart")) {
        let name = line.split('`').nth(1).unwrap().to_owned();
        if line.contains("| histogram |") {
            names.insert(format!("{name}_bucket"));
        }
        names.insert(name);
    }
    names
}

fn dashboards() -> Vec<(String, Value)> {
    let dir = repo().join("deploy/grafana/dashboards");
    let mut out: Vec<(String, Value)> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .map(|p| {
            let v = serde_json::from_str(&std::fs::read_to_string(&p).unwrap())
                .unwrap_or_else(|e| panic!("{}: {e}", p.display()));
            (p.file_name().unwrap().to_string_lossy().into_owned(), v)
        })
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    assert!(
        out.len() >= 4,
        "expected the four dashboards in {}",
        dir.display()
    );
    out
}

/// What Grafana needs of a dashboard to load and query it.
fn check_dashboard(name: &str, d: &Value) -> Vec<String> {
    let mut problems = Vec::new();
    let mut problem = |p: String| problems.push(format!("{name}: {p}"));
    for field in ["uid", "title"] {
        if !d[field].is_string() {
            problem(format!("no {field}"));
        }
    }
    if d["schemaVersion"].as_u64().is_none_or(|v| v < 36) {
        problem("schemaVersion missing or older than 36".into());
    }
    let vars = d["templating"]["list"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let datasource = vars.iter().any(|v| {
        v["name"] == "datasource" && v["type"] == "datasource" && v["query"] == "prometheus"
    });
    if !datasource {
        problem("no `datasource` variable of type datasource for prometheus".into());
    }
    for v in vars.iter().filter(|v| v["type"] == "query") {
        if v["datasource"]["uid"] != "${datasource}" || !v["query"]["query"].is_string() {
            problem(format!(
                "variable {} needs datasource ${{datasource}} and a query",
                v["name"]
            ));
        }
    }
    let panels = d["panels"].as_array().cloned().unwrap_or_default();
    if panels.is_empty() {
        problem("no panels".into());
    }
    let mut ids = BTreeSet::new();
    for p in &panels {
        let title = p["title"].as_str().unwrap_or("?").to_owned();
        if !p["id"].as_u64().is_some_and(|id| ids.insert(id)) {
            problem(format!("panel {title}: missing or repeated id"));
        }
        let known = [
            "timeseries",
            "stat",
            "gauge",
            "bargauge",
            "table",
            "text",
            "row",
        ];
        if !p["type"].as_str().is_some_and(|t| known.contains(&t)) {
            problem(format!(
                "panel {title}: type {} is not a core panel",
                p["type"]
            ));
        }
        let g = &p["gridPos"];
        let fits = ["x", "y", "w", "h"].iter().all(|k| g[k].is_u64())
            && g["x"].as_u64().unwrap_or(99) + g["w"].as_u64().unwrap_or(99) <= 24;
        if !fits {
            problem(format!(
                "panel {title}: gridPos must have x, y, w, h within 24 columns"
            ));
        }
        if p["datasource"]["type"] != "prometheus" || p["datasource"]["uid"] != "${datasource}" {
            problem(format!(
                "panel {title}: datasource must be prometheus ${{datasource}}"
            ));
        }
        let targets = p["targets"].as_array().cloned().unwrap_or_default();
        if targets.is_empty() {
            problem(format!("panel {title}: no targets"));
        }
        for t in targets {
            if !t["refId"].is_string() || t["expr"].as_str().is_none_or(str::is_empty) {
                problem(format!("panel {title}: a target without refId or expr"));
            }
        }
    }
    problems
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_evaluates_every_rule_and_dashboard_expression_on_a_live_mesh() {
    let deploy = repo().join("deploy");
    promtool(&[
        "check",
        "rules",
        deploy.join("prometheus/rules.yml").to_str().unwrap(),
    ]);
    promtool(&[
        "check",
        "config",
        "--syntax-only",
        deploy.join("prometheus/prometheus.yml").to_str().unwrap(),
    ]);
    let mut problems: Vec<String> = dashboards()
        .iter()
        .flat_map(|(name, d)| check_dashboard(name, d))
        .collect();
    assert!(problems.is_empty(), "dashboards:\n{}", problems.join("\n"));

    // A live mesh, with a denial and an ejection behind it so those series exist.
    let tmp = tempfile::tempdir().unwrap();
    let mesh = tmp.path().join("mesh");
    let demo = Demo::start(&mesh);
    demo.until("traffic", 120, |s| {
        route(s, HTTP)["requests"].as_u64() > Some(20)
    });
    meshctl(&mesh, &["demo", "deny"]);
    demo.until("403s", 60, |s| {
        route(s, HTTP)["failures"]["403"].as_u64() > Some(5)
    });
    meshctl(&mesh, &["demo", "allow"]);
    meshctl(&mesh, &["demo", "kill", "v2"]);
    demo.until("an ejection", 60, |s| s["ejections"].as_f64() >= Some(1.0));
    meshctl(&mesh, &["demo", "revive", "v2"]);

    let prometheus = Prometheus::start(tmp.path(), &mesh);
    let log = || std::fs::read_to_string(tmp.path().join("prometheus.log")).unwrap_or_default();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let targets = prometheus.api("/api/v1/targets").await;
        let active = targets["data"]["activeTargets"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        if active.len() == 5 && active.iter().all(|t| t["health"] == "up") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "targets not all up: {targets:#}\n{}",
            log()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    // Rates need two samples in their window from every target, and the
    // five targets' first scrapes are up to an interval apart: wait for three
    // successful scrapes of each (CI once queried the control plane's rates
    // after its first), and for the recording rules to have run.
    let deadline = Instant::now() + Duration::from_secs(60);
    while !matches!(prometheus.query("sum_over_time(up[1m]) >= 3").await, Ok(5))
        || !matches!(prometheus.query("rampart:request_errors:ratio_rate1m").await, Ok(n) if n >= 3)
    {
        assert!(
            Instant::now() < deadline,
            "three scrapes of every target and the recording rules never came\n{}",
            log()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }

    let documented = documented();
    let mut checked = 0;
    // The rules.
    let rules: Value = serde_saphyr::from_str(
        &std::fs::read_to_string(deploy.join("prometheus/rules.yml")).unwrap(),
    )
    .unwrap();
    for group in rules["groups"].as_array().unwrap() {
        for rule in group["rules"].as_array().unwrap() {
            let expr = rule["expr"].as_str().unwrap();
            let name = rule["record"].as_str().or(rule["alert"].as_str()).unwrap();
            let data_from = if rule["alert"].is_string() {
                if let Err(e) = prometheus.query(expr).await {
                    problems.push(format!("alert {name}: {e}"));
                }
                signal(expr)
            } else {
                expr
            };
            match prometheus.query(data_from).await {
                Ok(0) => problems.push(format!("rule {name}: no data from {data_from}")),
                Ok(_) => {}
                Err(e) => problems.push(format!("rule {name}: {e}")),
            }
            for metric in metric_names(expr) {
                if !documented.contains(&metric) && !metric.contains(':') {
                    problems.push(format!("rule {name}: {metric} is not in docs/metrics.md"));
                }
            }
            checked += 1;
        }
    }
    // The dashboards, every target, with their variables.
    for (file, d) in dashboards() {
        let mut values: Vec<(String, Vec<String>)> = Vec::new();
        for v in d["templating"]["list"].as_array().unwrap() {
            if v["type"] == "query" {
                let found = prometheus
                    .label_values(v["query"]["query"].as_str().unwrap())
                    .await;
                if found.is_empty() {
                    problems.push(format!("{file}: variable {} has no values", v["name"]));
                }
                values.push((format!("${}", v["name"].as_str().unwrap()), found));
            }
        }
        for p in d["panels"].as_array().unwrap() {
            for t in p["targets"].as_array().unwrap() {
                let expr = t["expr"]
                    .as_str()
                    .unwrap()
                    .replace("$__rate_interval", "30s");
                // The expression with each value of the variables it uses.
                let mut candidates = vec![expr.clone()];
                for (var, options) in &values {
                    if expr.contains(var.as_str()) {
                        candidates = candidates
                            .iter()
                            .flat_map(|c| options.iter().map(move |o| c.replace(var.as_str(), o)))
                            .collect();
                    }
                }
                let mut answers = Vec::new();
                for c in &candidates {
                    answers.push(prometheus.query(c).await);
                }
                let at = format!("{file} panel {:?}", p["title"].as_str().unwrap_or("?"));
                if let Some(Err(e)) = answers.iter().find(|a| a.is_err()) {
                    problems.push(format!("{at}: {e}\n  {expr}"));
                } else if !answers.iter().any(|a| matches!(a, Ok(n) if *n > 0)) {
                    problems.push(format!("{at}: no data\n  {expr}"));
                }
                for metric in metric_names(&expr) {
                    if !documented.contains(&metric) && !metric.contains(':') {
                        problems.push(format!("{at}: {metric} is not in docs/metrics.md"));
                    }
                }
                checked += 1;
            }
        }
    }
    assert!(
        problems.is_empty(),
        "{} of {checked} expressions failed:\n{}",
        problems.len(),
        problems.join("\n")
    );
    assert!(checked >= 40, "only {checked} expressions checked");
}

#[test]
fn the_checks_themselves() {
    assert_eq!(signal("(a - time()) / 86400 < 30"), "(a - time()) / 86400");
    assert_eq!(signal("rate(x[5m]) > 0.05"), "rate(x[5m])");
    assert_eq!(signal("up{c=\"x\"} == 0"), "up{c=\"x\"}");
    let names = metric_names(
        "sum by (le) (rate(rampart_x_bucket{a=\"rampart_not\"}[1m])) / rampart:rule + rampart_y",
    );
    assert_eq!(
        names.into_iter().collect::<Vec<_>>(),
        ["rampart:rule", "rampart_x_bucket", "rampart_y"]
    );
    assert!(documented().contains("rampart_xds_convergence_seconds_bucket"));
}
