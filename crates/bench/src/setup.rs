//! The rig: simulated backends on one core, the router (and the peer) on the
//! other, config files in a scratch directory.

use std::path::PathBuf;
use std::time::Duration;

use crate::load::Target;
use crate::procs::{free_port, wait_ready, Bins, Proc};

pub struct Rig {
    pub bins: Bins,
    pub dir: PathBuf,
    /// Cores for the backends + load generator, and for the proxies.
    pub near: Option<String>,
    pub far: Option<String>,
}

impl Rig {
    pub fn sim(&self, name: &str, model: &str, extra: &[&str]) -> Result<(Proc, Target), String> {
        self.sim_on(self.near.as_deref(), name, model, extra)
    }

    /// A backend on the proxies' cores instead, beside the router.
    pub fn sim_beside_proxy(
        &self,
        name: &str,
        model: &str,
        extra: &[&str],
    ) -> Result<(Proc, Target), String> {
        self.sim_on(self.far.as_deref(), name, model, extra)
    }

    fn sim_on(
        &self,
        cpus: Option<&str>,
        name: &str,
        model: &str,
        extra: &[&str],
    ) -> Result<(Proc, Target), String> {
        let port = free_port();
        let mut argv = self.bins.sim.clone();
        argv.extend(
            ["--port", &port.to_string(), "--model", model]
                .iter()
                .chain(extra)
                .map(|s| s.to_string()),
        );
        let launch = Launch {
            name,
            argv: &argv,
            env: &[],
            cpus,
            port,
            health: "/health",
            wait: Duration::from_secs(20),
        };
        self.launch(launch, "direct", None)
    }

    /// The router, from a routes.yaml body (its `listen` is added here).
    pub fn router(&self, name: &str, yaml: &str) -> Result<(Proc, Target), String> {
        self.router_as(name, yaml, "modelyard")
    }

    /// A router shown as `leg` in the report.
    pub fn router_as(
        &self,
        name: &str,
        yaml: &str,
        leg: &'static str,
    ) -> Result<(Proc, Target), String> {
        self.router_from(&self.bins.modelyard, name, yaml, leg)
    }

    /// A router from the binary `exe` (another build), shown as `leg`.
    pub fn router_from(
        &self,
        exe: &std::path::Path,
        name: &str,
        yaml: &str,
        leg: &'static str,
    ) -> Result<(Proc, Target), String> {
        let port = free_port();
        let config = self.dir.join(format!("{name}.yaml"));
        let state = self.dir.join(format!("{name}-state.json"));
        std::fs::write(
            &config,
            format!(
                "listen: 127.0.0.1:{port}\nstate_file: {}\n{yaml}",
                state.display()
            ),
        )
        .map_err(|e| e.to_string())?;
        let argv = vec![
            exe.display().to_string(),
            "serve".into(),
            "--config".into(),
            config.display().to_string(),
        ];
        // The router records where it listens (for the CLI) in the runtime
        // directory, and keeps its request log in the data directory unless
        // told: both in the scratch directory, so a bench run neither points
        // the user's `modelyard status` at itself nor fills their request log.
        let scratch = self.dir.display().to_string();
        let env = [
            ("MODELYARD_LOG", "warn".into()),
            ("XDG_RUNTIME_DIR", scratch.clone()),
            ("XDG_DATA_HOME", scratch),
        ];
        let launch = Launch {
            name,
            argv: &argv,
            env: &env,
            cpus: self.far.as_deref(),
            port,
            health: "/healthz",
            wait: Duration::from_secs(20),
        };
        self.launch(launch, leg, None)
    }

    /// The request log a router of the rig keeps: in the scratch directory.
    pub fn request_log(&self, name: &str) -> String {
        format!(
            "request_log: {{path: \"{}\"}}\n",
            self.dir.join(format!("{name}-requests.db")).display()
        )
    }

    /// LiteLLM's proxy in front of the given backends, if it is installed.
    pub fn litellm(
        &self,
        exe: &std::path::Path,
        models: &[(&str, &Target)],
    ) -> Result<(Proc, Target), String> {
        if !exe.exists() {
            return Err(format!("{} is not installed", exe.display()));
        }
        let port = free_port();
        let config = self.dir.join("litellm.yaml");
        let mut yaml = String::from("model_list:\n");
        for (name, t) in models {
            yaml.push_str(&format!(
                "  - model_name: {name}\n    litellm_params: {{model: openai/{name}, api_base: \"{}/v1\", api_key: dummy}}\n",
                t.base
            ));
        }
        std::fs::write(&config, yaml).map_err(|e| e.to_string())?;
        let key = format!(
            "sk-bench-{:016x}",
            std::process::id() as u64 * 0x9e37_79b9_7f4a_7c15
        );
        let argv = vec![
            exe.display().to_string(),
            "--config".into(),
            config.display().to_string(),
            "--host".into(),
            "127.0.0.1".into(),
            "--port".into(),
            port.to_string(),
        ];
        let launch = Launch {
            name: "litellm",
            argv: &argv,
            env: &[
                ("LITELLM_LOCAL_MODEL_COST_MAP", "True".into()),
                ("LITELLM_MASTER_KEY", key.clone()),
                ("LITELLM_LOG", "ERROR".into()),
            ],
            cpus: self.far.as_deref(),
            port,
            health: "/health/liveliness",
            wait: Duration::from_secs(90),
        };
        self.launch(launch, "litellm", Some(key))
    }

    /// nginx as a plain reverse proxy in front of `backend`: one worker, no
    /// daemon, keep-alive both ways, nothing buffered, on the router's cores.
    /// Its `/health` is the backend's, proxied, so ready means proxying.
    pub fn nginx(
        &self,
        exe: &std::path::Path,
        name: &str,
        backend: &Target,
        cpus: Option<&str>,
    ) -> Result<(Proc, Target), String> {
        if !exe.exists() {
            return Err(format!(
                "{} is not installed (apt-get install nginx-light)",
                exe.display()
            ));
        }
        let port = free_port();
        let prefix = self.dir.join(name);
        std::fs::create_dir_all(&prefix).map_err(|e| e.to_string())?;
        let config = prefix.join("nginx.conf");
        std::fs::write(&config, nginx_conf(&prefix, port, backend)).map_err(|e| e.to_string())?;
        let argv = vec![
            exe.display().to_string(),
            "-p".into(),
            prefix.display().to_string(),
            "-c".into(),
            config.display().to_string(),
        ];
        let launch = Launch {
            name,
            argv: &argv,
            env: &[],
            cpus,
            port,
            health: "/health",
            wait: Duration::from_secs(20),
        };
        self.launch(launch, "nginx", None)
    }

    /// The cores the proxies run on (None unpinned).
    pub fn far(&self) -> Option<&str> {
        self.far.as_deref()
    }

    /// Starts a server, its output in `<name>.log`, and waits for its health path.
    fn launch(
        &self,
        l: Launch<'_>,
        target: &'static str,
        auth: Option<String>,
    ) -> Result<(Proc, Target), String> {
        let log = self.dir.join(format!("{}.log", l.name));
        let mut p = Proc::spawn(l.name, l.argv, l.env, l.cpus, &log)?;
        let base = format!("http://127.0.0.1:{}", l.port);
        wait_ready(&mut p, &format!("{base}{}", l.health), l.wait, &log)?;
        Ok((
            p,
            Target {
                name: target,
                base,
                auth,
            },
        ))
    }
}

/// A server to start: how, where, and how it says it is ready.
struct Launch<'a> {
    name: &'a str,
    argv: &'a [String],
    env: &'a [(&'a str, String)],
    cpus: Option<&'a str>,
    port: u16,
    health: &'a str,
    wait: Duration,
}

/// LiteLLM's version, from its wheel's metadata directory beside the executable.
pub fn litellm_version(exe: &std::path::Path) -> Option<String> {
    let lib = exe.parent()?.parent()?.join("lib");
    for py in std::fs::read_dir(lib).ok()?.flatten() {
        let site = py.path().join("site-packages");
        for e in std::fs::read_dir(site).into_iter().flatten().flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if let Some(v) = name
                .strip_prefix("litellm-")
                .and_then(|r| r.strip_suffix(".dist-info"))
            {
                return Some(v.to_string());
            }
        }
    }
    None
}

/// nginx's config for one upstream: keep-alive to the backend (HTTP/1.1, the
/// Connection header cleared), nothing buffered so streams pass as they come,
/// no access log, and keep-alive limits far above a round's requests so that
/// neither leg reconnects mid-run (nginx's default closes after 1,000).
fn nginx_conf(prefix: &std::path::Path, port: u16, backend: &Target) -> String {
    let p = prefix.display();
    let up = backend.base.trim_start_matches("http://");
    format!(
        "worker_processes 1;
daemon off;
master_process on;
pid {p}/nginx.pid;
error_log {p}/error.log warn;
worker_rlimit_nofile 65536;
events {{ worker_connections 16384; }}
http {{
  access_log off;
  client_body_temp_path {p}/body;
  proxy_temp_path {p}/proxy;
  fastcgi_temp_path {p}/fastcgi;
  uwsgi_temp_path {p}/uwsgi;
  scgi_temp_path {p}/scgi;
  keepalive_requests 10000000;
  keepalive_timeout 120s;
  upstream be {{
    server {up};
    keepalive 64;
    keepalive_requests 10000000;
    keepalive_timeout 120s;
  }}
  server {{
    listen 127.0.0.1:{port};
    location / {{
      proxy_pass http://be;
      proxy_http_version 1.1;
      proxy_set_header Connection \"\";
      proxy_buffering off;
    }}
  }}
}}
"
    )
}

/// `nginx -v` says "nginx version: nginx/1.22.1" on stderr.
pub fn nginx_version(exe: &std::path::Path) -> Option<String> {
    let out = std::process::Command::new(exe).arg("-v").output().ok()?;
    let text = String::from_utf8_lossy(&out.stderr).into_owned();
    text.trim().rsplit('/').next().map(str::to_string)
}
