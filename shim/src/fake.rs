//! A stand-in engine for tests: it restores nothing and forks nothing.
//! "Loading a template" only checks the function's bundle, and "forking"
//! starts the bundle's own process as an ordinary container (a cold
//! start, no memory image). It exists so sproutd's API, events, side
//! channel and restart handling can be tested with real containers
//! before and apart from the template engine; sproutd offers it only
//! behind a hidden flag.
//!
//! Each instance gets its own cgroup: with the function's bundle at
//! `<bundle's cgroupsPath>-<id>` (`sproutd-fake-<id>` if the bundle names
//! none), with a bundle of its own at that bundle's `cgroupsPath`.
//! Annotations and resources of the fork are written into a private copy
//! of the bundle's config (under the engine directory, removed once the
//! container is created). A network namespace handed over (a VPC's) is
//! joined by its path under sproutd's /proc/PID/fd; a console socket is
//! refused. A function's
//! `after_fork_signal` is not sent: a cold start runs the initializer in
//! every instance, so there is nothing to re-seed.

use std::collections::HashSet;
use std::fs;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Instant;

use sprout_runtime::{CreateOptions, Runtime};

use crate::engine::{
    Engine, EngineContext, EngineError, ForkRequest, InstanceInfo, Stage, TemplateInfo,
};
use crate::registry::FunctionSpec;

pub struct FakeEngine {
    runtime: Runtime,
    bundles: PathBuf,
    loaded: Mutex<HashSet<String>>,
}

impl FakeEngine {
    pub fn new(ctx: &EngineContext) -> Result<Self, EngineError> {
        let runtime = Runtime::builder()
            .root(&ctx.runtime_root)
            .init_binary(&ctx.init_binary)
            .build()?;
        Ok(Self {
            runtime,
            bundles: ctx.engine_dir.join("fake-bundles"),
            loaded: Mutex::new(HashSet::new()),
        })
    }

    fn loaded(&self) -> std::sync::MutexGuard<'_, HashSet<String>> {
        self.loaded.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The instance's config: the source bundle's, with an absolute root,
    /// its own cgroup, the fork's annotations and resources.
    fn write_bundle(
        &self,
        f: &FunctionSpec,
        req: &ForkRequest,
        src: &Path,
    ) -> Result<PathBuf, EngineError> {
        let invalid = |m: String| EngineError::Invalid(format!("bundle {}: {m}", src.display()));
        let text = fs::read(src.join("config.json")).map_err(|e| invalid(e.to_string()))?;
        let mut config: serde_json::Value =
            serde_json::from_slice(&text).map_err(|e| invalid(e.to_string()))?;
        let obj = config
            .as_object_mut()
            .ok_or_else(|| invalid("config.json is not an object".into()))?;
        if let Some(root) = obj.get_mut("root").and_then(|r| r.as_object_mut())
            && let Some(p) = root.get("path").and_then(|p| p.as_str())
            && !Path::new(p).is_absolute()
        {
            let abs = src.join(p);
            root.insert("path".into(), abs.to_string_lossy().into_owned().into());
        }
        let linux = obj
            .entry("linux")
            .or_insert_with(|| serde_json::json!({}))
            .as_object_mut()
            .ok_or_else(|| invalid("linux is not an object".into()))?;
        if let Some(p) = &req.cgroups_path {
            linux.insert(
                "cgroupsPath".into(),
                p.to_string_lossy().into_owned().into(),
            );
        } else if req.bundle.is_none() {
            let base = linux
                .get("cgroupsPath")
                .and_then(|p| p.as_str())
                .filter(|p| !p.is_empty())
                .unwrap_or("sproutd-fake")
                .trim_end_matches('/')
                .to_string();
            linux.insert("cgroupsPath".into(), format!("{base}-{}", req.id).into());
        }
        if let Some(r) = req.resources.as_ref().or(f.resources.as_ref()) {
            let mut new = serde_json::to_value(r).map_err(|e| invalid(e.to_string()))?;
            // Keep the bundle's device rules unless the limits bring their own.
            if let (Some(n), Some(devices)) = (
                new.as_object_mut(),
                linux
                    .get("resources")
                    .and_then(|r| r.get("devices"))
                    .cloned(),
            ) {
                n.entry("devices").or_insert(devices);
            }
            linux.insert("resources".into(), new);
        }
        if let Some(ns) = &req.netns {
            // Opened by path while the fork holds the fd.
            let path = format!("/proc/{}/fd/{}", std::process::id(), ns.as_raw_fd());
            let namespaces = linux
                .entry("namespaces")
                .or_insert_with(|| serde_json::json!([]))
                .as_array_mut()
                .ok_or_else(|| invalid("linux.namespaces is not an array".into()))?;
            namespaces.retain(|n| n["type"] != "network");
            namespaces.push(serde_json::json!({"type": "network", "path": path}));
        }
        if !req.annotations.is_empty() {
            let ann = obj
                .entry("annotations")
                .or_insert_with(|| serde_json::json!({}));
            if let Some(a) = ann.as_object_mut() {
                for (k, v) in &req.annotations {
                    a.insert(k.clone(), v.clone().into());
                }
            }
        }
        let dir = self.bundles.join(&req.id);
        let _ = fs::remove_dir_all(&dir);
        let io = |source: std::io::Error| EngineError::Io {
            what: dir.display().to_string(),
            source,
        };
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)
            .map_err(io)?;
        fs::write(
            dir.join("config.json"),
            serde_json::to_vec(&config).expect("serializable"),
        )
        .map_err(io)?;
        Ok(dir)
    }
}

impl Engine for FakeEngine {
    fn name(&self) -> &'static str {
        "fake (test only: instances are cold-started from the bundle)"
    }

    fn load_template(&self, f: &FunctionSpec) -> Result<TemplateInfo, EngineError> {
        let t = Instant::now();
        sprout_runtime::spec::load_bundle(&f.bundle)
            .map_err(|e| EngineError::Invalid(format!("bundle {}: {e}", f.bundle.display())))?;
        self.loaded().insert(f.name.clone());
        Ok(TemplateInfo {
            function: f.name.clone(),
            pid: 0,
            load_time: t.elapsed(),
        })
    }

    fn has_template(&self, function: &str) -> bool {
        self.loaded().contains(function)
    }

    fn drop_template(&self, function: &str) -> Result<(), EngineError> {
        if self.loaded().remove(function) {
            Ok(())
        } else {
            Err(EngineError::NoTemplate(function.into()))
        }
    }

    fn fork(&self, f: &FunctionSpec, req: ForkRequest) -> Result<InstanceInfo, EngineError> {
        if !self.loaded().contains(&f.name) {
            return Err(EngineError::NoTemplate(f.name.clone()));
        }
        if req.console_socket.is_some() {
            return Err(EngineError::Unsupported(
                "the fake engine cannot give instances a terminal".into(),
            ));
        }
        let t = Instant::now();
        let src = req.bundle.clone().unwrap_or_else(|| f.bundle.clone());
        let dir = self.write_bundle(f, &req, &src)?;
        let devnull = || -> Result<OwnedFd, EngineError> {
            Ok(fs::File::open("/dev/null")
                .map_err(|source| EngineError::Io {
                    what: "/dev/null".into(),
                    source,
                })?
                .into())
        };
        let [a, b, c] = req.stdio;
        let stdio = [
            Some(a.map_or_else(devnull, Ok)?),
            Some(b.map_or_else(devnull, Ok)?),
            Some(c.map_or_else(devnull, Ok)?),
        ];
        let mut stages = vec![Stage::new("bundle", t.elapsed())];
        let t = Instant::now();
        let created = self.runtime.create(
            &req.id,
            &dir,
            CreateOptions {
                stdio,
                ..Default::default()
            },
        );
        let _ = fs::remove_dir_all(&dir);
        let mut container = created?;
        stages.push(Stage::new("create", t.elapsed()));
        let t = Instant::now();
        if let Err(e) = container.start() {
            let _ = container.clone().delete(true);
            return Err(e.into());
        }
        stages.push(Stage::new("start", t.elapsed()));
        Ok(InstanceInfo {
            id: req.id,
            pid: container.saved().init.map_or(0, |p| p.pid),
            pidfd: None,
            stages,
        })
    }
}
