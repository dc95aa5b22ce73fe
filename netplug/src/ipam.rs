//! Address management per VPC: one file per address in use
//! (`ipam/<vpc>/<address>`, holding the namespace id), created with
//! `O_EXCL`, so no address is ever handed out twice, by any process, and
//! the allocation survives a crash of whoever made it.

use std::fs;
use std::io::{self, Write};
use std::net::Ipv4Addr;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::state::{self, Vpc};

pub struct Ipam {
    dir: PathBuf,
}

impl Ipam {
    pub fn new(dir: &Path) -> Self {
        Ipam {
            dir: dir.to_path_buf(),
        }
    }

    /// Allocates a free host address of `vpc`'s subnet (never its
    /// gateway) for namespace `id`.
    pub fn allocate(&self, vpc: &Vpc, id: &str) -> Result<Ipv4Addr> {
        state::mkdirs(&self.dir)?;
        let used: std::collections::HashSet<String> =
            state::list(&self.dir, "")?.into_iter().collect();
        for ip in vpc.subnet.hosts() {
            if ip == vpc.gateway || used.contains(&ip.to_string()) {
                continue;
            }
            let path = self.dir.join(ip.to_string());
            match fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&path)
            {
                Ok(mut f) => {
                    if let Err(e) = f.write_all(id.as_bytes()) {
                        let _ = fs::remove_file(&path);
                        return Err(Error::io(path)(e));
                    }
                    return Ok(ip);
                }
                // Another allocator was quicker: try the next one.
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(Error::io(path)(e)),
            }
        }
        Err(Error::SubnetExhausted {
            vpc: vpc.name.clone(),
            subnet: vpc.subnet,
            hosts: vpc.subnet.host_count() - 1,
        })
    }

    /// Releases `ip` if namespace `id` holds it.
    pub fn release(&self, ip: Ipv4Addr, id: &str) -> Result<()> {
        let path = self.dir.join(ip.to_string());
        match fs::read_to_string(&path) {
            Ok(holder) if holder == id => state::remove_file(&path),
            Ok(_) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(Error::io(path)(e)),
        }
    }

    /// Every allocation: (address, namespace id).
    pub fn allocations(&self) -> Result<Vec<(Ipv4Addr, String)>> {
        let mut out = Vec::new();
        for name in state::list(&self.dir, "")? {
            let Ok(ip) = name.parse::<Ipv4Addr>() else {
                continue;
            };
            let path = self.dir.join(&name);
            match fs::read_to_string(&path) {
                Ok(id) => out.push((ip, id)),
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(Error::io(path)(e)),
            }
        }
        Ok(out)
    }

    /// Removes the whole allocation directory (VPC deletion).
    pub fn destroy(&self) -> Result<()> {
        match fs::remove_dir_all(&self.dir) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(Error::io(&self.dir)(e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::FillMode;

    fn vpc(subnet: &str) -> Vpc {
        let subnet: crate::Subnet = subnet.parse().unwrap();
        Vpc {
            name: "t".into(),
            subnet,
            gateway: subnet.first_host(),
            mtu: 1500,
            bridge: "npbr0".into(),
            pool_size: 0,
            give_back: Default::default(),
            fill: FillMode::Native,
        }
    }

    #[test]
    fn unique_under_concurrency_and_exhaustion_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let ipam = Ipam::new(&dir.path().join("ipam"));
        // /26: 62 hosts, one of them the gateway.
        let v = vpc("198.18.9.0/26");
        let got: Vec<Ipv4Addr> = std::thread::scope(|s| {
            let hs: Vec<_> = (0..8)
                .map(|t| {
                    let (ipam, v) = (&ipam, &v);
                    s.spawn(move || {
                        (0..8)
                            .filter_map(|i| ipam.allocate(v, &format!("ns{t}-{i}")).ok())
                            .collect::<Vec<_>>()
                    })
                })
                .collect();
            hs.into_iter().flat_map(|h| h.join().unwrap()).collect()
        });
        assert_eq!(got.len(), 61);
        let unique: std::collections::HashSet<_> = got.iter().collect();
        assert_eq!(unique.len(), 61);
        assert!(!got.contains(&v.gateway));
        let err = ipam.allocate(&v, "one-more").unwrap_err();
        assert!(
            matches!(err, Error::SubnetExhausted { hosts: 61, .. }),
            "{err}"
        );
        assert!(err.to_string().contains("198.18.9.0/26"), "{err}");
        // Release only by the holder.
        let (ip, id) = ipam.allocations().unwrap().remove(0);
        ipam.release(ip, "someone-else").unwrap();
        assert_eq!(ipam.allocations().unwrap().len(), 61);
        ipam.release(ip, &id).unwrap();
        assert_eq!(ipam.allocate(&v, "again").unwrap(), ip);
    }
}
