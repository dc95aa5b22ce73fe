//! The template engine: each function's image restored once into a
//! [`Template`], every instance forked from it copy-on-write
//! ([`sprout_snapshot::template`] has the mechanism).
//!
//! Templates live in **holder** sandboxes, containers of a runtime rooted
//! in the engine's directory (not sproutd's, whose containers are all
//! instances). A holder's init is the reaper of its template and of every
//! instance forked from it, and those instances live in pid namespaces
//! nested in the holder's: a holder must outlive its instances. So a
//! dropped template's holder is **retired**, not deleted, and deleted
//! once no process is left below its init. Templates do not survive
//! sproutd (the tracer's `PTRACE_O_EXITKILL`); holders and instances do,
//! and the next engine retires the holders it finds.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use sprout_runtime::{Container, Runtime};
use sprout_snapshot::profile::WriteSet;
use sprout_snapshot::ptrace::Tracer;
use sprout_snapshot::template::{ForkSpec, Template, TemplateError};

use crate::engine::{
    Engine, EngineContext, EngineError, ForkRequest, InstanceInfo, Stage, TemplateInfo,
};
use crate::registry::FunctionSpec;

/// How often retired holders are checked for instances left.
const RETIRED_CHECK: Duration = Duration::from_secs(2);
/// How long a stopping sproutd waits for holders whose instances are all
/// dead but not yet reaped.
const SHUTDOWN_REAP_WAIT: Duration = Duration::from_secs(2);

/// The engine. Cheap to share: the state is behind one `Arc`.
#[derive(Clone)]
pub struct SforkEngine {
    inner: Arc<Inner>,
}

struct Inner {
    /// sproutd's runtime: instances are its containers.
    instances: Runtime,
    /// The engine's own runtime: holders.
    holders: Runtime,
    tracer: Tracer,
    templates: Mutex<HashMap<String, Arc<Template>>>,
    /// Holders whose template is gone, kept while instances live below.
    retired: Mutex<Vec<Container>>,
}

impl std::fmt::Debug for SforkEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SforkEngine")
            .field("holders", &self.inner.holders.root())
            .finish()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl SforkEngine {
    /// Starts the engine: its tracer thread, its holders' runtime under
    /// `ctx.engine_dir`, and the retirement of holders a previous sproutd
    /// left (their templates died with it).
    pub fn new(ctx: &EngineContext) -> Result<SforkEngine, EngineError> {
        sprout_snapshot::image::set_hash_cache_dir(ctx.engine_dir.join("file-hashes"));
        let runtime = |root: PathBuf| {
            Runtime::builder()
                .root(root)
                .init_binary(&ctx.init_binary)
                .build()
        };
        let instances = runtime(ctx.runtime_root.clone())?;
        let holders = runtime(ctx.engine_dir.join("holders"))?;
        let tracer = Tracer::spawn("sproutd-tracer").map_err(|source| EngineError::Io {
            what: "starting the tracer thread".into(),
            source,
        })?;
        let left = holders.list()?;
        let engine = SforkEngine {
            inner: Arc::new(Inner {
                instances,
                holders,
                tracer,
                templates: Mutex::new(HashMap::new()),
                retired: Mutex::new(left),
            }),
        };
        engine.inner.delete_idle_holders();
        let weak = Arc::downgrade(&engine.inner);
        std::thread::Builder::new()
            .name("sproutd-holders".into())
            .spawn(move || {
                while let Some(inner) = weak.upgrade() {
                    inner.delete_idle_holders();
                    drop(inner);
                    std::thread::sleep(RETIRED_CHECK);
                }
            })
            .map_err(|source| EngineError::Io {
                what: "starting the holder check thread".into(),
                source,
            })?;
        Ok(engine)
    }

    fn template(&self, function: &str) -> Option<Arc<Template>> {
        lock(&self.inner.templates).get(function).cloned()
    }

    /// Forgets `template` (dead: killed from outside) if it is still the
    /// function's, so the next load restores a new one; its holder is
    /// retired like a dropped template's.
    fn forget_dead(&self, template: &Arc<Template>) {
        let mut templates = lock(&self.inner.templates);
        if templates
            .get(template.name())
            .is_some_and(|t| Arc::ptr_eq(t, template))
        {
            templates.remove(template.name());
            drop(templates);
            tracing::warn!(function = %template.name(), "the template died; it is loaded again at the next fork");
            self.inner.retire(template);
        }
    }
}

impl Inner {
    /// Deletes every retired holder with no process left below its init.
    fn delete_idle_holders(&self) {
        let mut retired = lock(&self.retired);
        retired.retain(|holder| {
            if holder_has_children(holder) {
                return true;
            }
            let id = holder.id().to_string();
            match holder.clone().delete(true) {
                Ok(()) => {
                    tracing::debug!(holder = %id, "deleted an idle holder");
                    false
                }
                Err(e) => {
                    tracing::warn!(holder = %id, error = %e, "deleting an idle holder");
                    true
                }
            }
        });
    }

    fn retire(&self, template: &Template) {
        let _ = template.drop_template();
        let holder = template.holder().clone();
        lock(&self.retired).push(holder);
    }
}

/// Whether the holder's init still has children (the template or
/// instances); a holder whose init is gone has none.
fn holder_has_children(holder: &Container) -> bool {
    holder_children(holder).is_some_and(|c| !c.is_empty())
}

/// Are all the holder's children dead, only waiting for its reaper?
fn holder_only_reaps(holder: &Container) -> bool {
    holder_children(holder).is_some_and(|children| {
        !children.is_empty()
            && children.iter().all(|child| {
                // The state follows the command, which is in parentheses.
                std::fs::read_to_string(format!("/proc/{child}/stat"))
                    .map(|stat| {
                        let state = stat.rsplit_once(')').map(|(_, rest)| rest.trim_start());
                        state.is_some_and(|r| r.starts_with('Z') || r.starts_with('X'))
                    })
                    .unwrap_or(true)
            })
    })
}

/// The pids of the holder's init's children (`None`: no init, or gone).
fn holder_children(holder: &Container) -> Option<Vec<String>> {
    let pid = holder.pid()?;
    let children = std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).ok()?;
    Some(children.split_whitespace().map(str::to_string).collect())
}

/// A unique suffix for holder ids: a function's template may be loaded
/// again while its old holder is retired.
fn generation() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0)
}

/// `cgroupsPath` of the bundle at `dir` with `-suffix` appended, when it
/// has one: containers that share a bundle need a cgroup each.
fn derived_cgroups_path(dir: &Path, suffix: &str) -> Result<Option<PathBuf>, EngineError> {
    let bundle = sprout_runtime::spec::load_bundle(dir).map_err(sprout_runtime::Error::from)?;
    let path = bundle
        .spec
        .linux()
        .as_ref()
        .and_then(|l| l.cgroups_path().clone())
        .filter(|p| !p.as_os_str().is_empty());
    Ok(path.map(|p| {
        let mut s = p.into_os_string();
        s.push(format!("-{suffix}"));
        PathBuf::from(s)
    }))
}

impl Engine for SforkEngine {
    fn name(&self) -> &'static str {
        "sfork"
    }

    fn load_template(&self, f: &FunctionSpec) -> Result<TemplateInfo, EngineError> {
        if let Some(t) = self.template(&f.name) {
            if t.is_alive() {
                return Ok(TemplateInfo {
                    function: f.name.clone(),
                    pid: t.pid().unwrap_or(0),
                    load_time: Duration::ZERO,
                });
            }
            self.forget_dead(&t);
        }
        let holder_id = format!("{}-{}", f.name, generation());
        let cgroups_path = derived_cgroups_path(&f.bundle, &holder_id)?;
        let (template, timings) = Template::load(
            &self.inner.holders,
            &self.inner.tracer,
            &f.name,
            &holder_id,
            &f.image,
            &f.bundle,
            cgroups_path.as_deref(),
        )?;
        let info = TemplateInfo {
            function: f.name.clone(),
            pid: template.pid().unwrap_or(0),
            load_time: timings.total(),
        };
        lock(&self.inner.templates).insert(f.name.clone(), Arc::new(template));
        Ok(info)
    }

    fn has_template(&self, function: &str) -> bool {
        self.template(function).is_some_and(|t| t.is_alive())
    }

    fn drop_template(&self, function: &str) -> Result<(), EngineError> {
        let template = lock(&self.inner.templates)
            .remove(function)
            .ok_or_else(|| EngineError::NoTemplate(function.into()))?;
        self.inner.retire(&template);
        self.inner.delete_idle_holders();
        Ok(())
    }

    fn fork(&self, f: &FunctionSpec, req: ForkRequest) -> Result<InstanceInfo, EngineError> {
        let template = self
            .template(&f.name)
            .ok_or_else(|| EngineError::NoTemplate(f.name.clone()))?;
        if req.console_socket.is_some() {
            return Err(EngineError::Unsupported(
                "forked instances get stdio, not a terminal: the console socket is not supported"
                    .into(),
            ));
        }
        // The function's bundle is shared by its instances: each gets a
        // cgroup of its own (the request's, for pool instances). A bundle
        // of the request's own is used as is.
        let cgroups_path = match (&req.cgroups_path, &req.bundle) {
            (Some(p), _) => Some(p.clone()),
            (None, Some(_)) => None,
            (None, None) => derived_cgroups_path(&f.bundle, &req.id)?,
        };
        let after_fork_signal = f
            .after_fork_signal()
            .map_err(|e| EngineError::Invalid(format!("function {:?}: {e}", f.name)))?;
        let spec = ForkSpec {
            bundle: req.bundle,
            stdio: req.stdio,
            netns: req.netns,
            after_fork_signal,
            cgroups_path,
            resources: req.resources.or_else(|| f.resources.clone()),
            annotations: req.annotations,
            populate: req.populate,
        };
        let forked = match template.fork(&self.inner.instances, &req.id, spec) {
            Ok(forked) => forked,
            Err(TemplateError::Gone(name)) => {
                // Died since sproutd asked (`has_template`): the next
                // fork loads it again.
                self.forget_dead(&template);
                return Err(EngineError::NoTemplate(name));
            }
            Err(e) => return Err(e.into()),
        };
        Ok(InstanceInfo {
            id: req.id,
            pid: forked.container.pid().unwrap_or(0),
            pidfd: Some(forked.pidfd),
            stages: forked
                .timings
                .stages
                .iter()
                .map(|(name, d)| Stage::new(*name, *d))
                .collect(),
        })
    }

    fn record_write_set(&self, function: &str, pid: i32) -> Result<Option<WriteSet>, EngineError> {
        let template = self
            .template(function)
            .ok_or_else(|| EngineError::NoTemplate(function.into()))?;
        Ok(Some(WriteSet::record(pid, &template)?))
    }

    fn shutdown(&self) {
        let templates: Vec<_> = lock(&self.inner.templates)
            .drain()
            .map(|(_, t)| t)
            .collect();
        for t in templates {
            self.inner.retire(&t);
        }
        // Instances deleted just before (a graceful stop deletes the
        // pool's) may still wait for their reaper: give those holders a
        // moment. Holders with a live instance stay for the next sproutd.
        let deadline = Instant::now() + SHUTDOWN_REAP_WAIT;
        loop {
            self.inner.delete_idle_holders();
            let reaping = lock(&self.inner.retired).iter().any(holder_only_reaps);
            if !reaping || Instant::now() >= deadline {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}
