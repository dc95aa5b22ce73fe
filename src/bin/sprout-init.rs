//! `sprout-init`: the helper a container's init runs as. It is started by
//! the runtime (clone3 into new namespaces + execve), receives its config
//! over an inherited socket and ends by exec'ing the container's process.
//! A separate small binary: it is exec'd on every start, so its size and
//! start-up cost are on the hot path.

fn main() {
    sprout_runtime::init::main()
}
