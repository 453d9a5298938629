//! Workload identity: what the kernel's interception record says about the caller, turned into
//! names policy can match — user name, cgroup path, systemd unit, container id, Kubernetes pod.
//!
//! The path parsers are pure functions over cgroup v2 paths (relative to the cgroup root, as in
//! `/proc/<pid>/cgroup`). [`WorkloadResolver`] does the file-system work with caches: uid → name
//! from /etc/passwd, cgroup id → path by matching the cgroup directory's inode number (which is
//! the cgroup id on cgroup v2), trying `/proc/<tgid>/cgroup` first when the process still runs.
//! Its methods do blocking file I/O: call them from `spawn_blocking` or a dedicated thread.

use std::collections::HashMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime};

use crate::model::Workload;

/// Names derived from a cgroup path.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CgroupInfo {
    /// The innermost systemd unit (`nginx.service`, `session-3.scope`, `docker-<id>.scope`).
    pub unit: Option<String>,
    /// A container id (64 hex digits) from docker, containerd, cri-o or podman path shapes.
    pub container_id: Option<String>,
    /// A Kubernetes pod UID, with dashes, from `kubepods` paths of either cgroup driver.
    pub pod_uid: Option<String>,
}

/// Everything [`CgroupInfo`] holds, from one path.
pub fn describe(cgroup_path: &str) -> CgroupInfo {
    CgroupInfo {
        unit: systemd_unit(cgroup_path).map(str::to_string),
        container_id: container_id(cgroup_path).map(str::to_string),
        pod_uid: pod_uid(cgroup_path),
    }
}

const UNIT_SUFFIXES: &[&str] = &[".service", ".scope", ".socket", ".mount", ".swap"];

/// The innermost systemd unit on the path. Slices are grouping, not units a process runs in, so
/// they are skipped; components below a unit (delegated sub-cgroups) are skipped too.
pub fn systemd_unit(cgroup_path: &str) -> Option<&str> {
    cgroup_path.split('/').rev().find(|c| {
        UNIT_SUFFIXES
            .iter()
            .any(|s| c.len() > s.len() && c.ends_with(s))
    })
}

/// Prefixes runtimes put before the container id in systemd scope names.
const CONTAINER_PREFIXES: &[&str] = &[
    "docker-",
    "cri-containerd-",
    "crio-",
    "libpod-",
    "containerd-",
];

/// The container id on the path: `docker-<id>.scope`, `cri-containerd-<id>.scope`,
/// `crio-<id>.scope`, `libpod-<id>.scope` (systemd driver), or a bare `<id>` component
/// (`/docker/<id>`, `/kubepods/besteffort/pod<uid>/<id>` with the cgroupfs driver). cri-o's
/// `crio-conmon-<id>` monitor is not the container and is not reported.
pub fn container_id(cgroup_path: &str) -> Option<&str> {
    cgroup_path.split('/').rev().find_map(|c| {
        let c = c.strip_suffix(".scope").unwrap_or(c);
        let id = CONTAINER_PREFIXES
            .iter()
            .find_map(|p| c.strip_prefix(p))
            .unwrap_or(c);
        is_container_id(id).then_some(id)
    })
}

fn is_container_id(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// The Kubernetes pod UID on a `kubepods` path: `pod<uid>` (cgroupfs driver) or
/// `kubepods-<qos>-pod<uid_with_underscores>.slice` (systemd driver), returned with dashes.
///
/// Only the kubelet's own tree counts: the path starts at `/kubepods` (or `/kubepods.slice`),
/// and the pod is its QoS level's child or its own. Any user can make cgroups named like a pod
/// in the subtree systemd delegates to them (`/user.slice/…/user@UID.service/pod<uid>`), and
/// a pod identity is what policy grants groups to.
pub fn pod_uid(cgroup_path: &str) -> Option<String> {
    let mut parts = cgroup_path.split('/').filter(|p| !p.is_empty());
    let root = parts.next()?;
    if root != "kubepods" && root != "kubepods.slice" {
        return None;
    }
    let systemd = root == "kubepods.slice";
    // The pod sits right under the root (guaranteed QoS) or under its QoS level.
    parts.take(2).find_map(|c| {
        let uid = if systemd {
            let c = c.strip_prefix("kubepods-")?.strip_suffix(".slice")?;
            c.rsplit('-').next()?.strip_prefix("pod")?.replace('_', "-")
        } else {
            c.strip_prefix("pod")?.to_owned()
        };
        is_uuid(&uid).then_some(uid)
    })
}

fn is_uuid(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() == 36
        && b.iter().enumerate().all(|(i, &c)| match i {
            8 | 13 | 18 | 23 => c == b'-',
            _ => c.is_ascii_hexdigit(),
        })
}

/// The cgroup v2 path from the text of `/proc/<pid>/cgroup` (the `0::<path>` line).
pub fn parse_proc_cgroup(text: &str) -> Option<&str> {
    text.lines()
        .find_map(|l| l.strip_prefix("0::"))
        .map(str::trim_end)
        .filter(|p| p.starts_with('/'))
}

/// uid → user name from the text of /etc/passwd. The first entry for a uid wins, as in libc.
pub fn parse_passwd(text: &str) -> HashMap<u32, String> {
    let mut map = HashMap::new();
    for line in text.lines() {
        if line.starts_with('#') || line.starts_with('+') || line.starts_with('-') {
            continue;
        }
        let mut f = line.split(':');
        let (Some(name), Some(_pw), Some(uid)) = (f.next(), f.next(), f.next()) else {
            continue;
        };
        if let Ok(uid) = uid.parse::<u32>()
            && !name.is_empty()
        {
            map.entry(uid).or_insert_with(|| name.to_string());
        }
    }
    map
}

/// cgroup v2 mount points from the text of `/proc/self/mountinfo`.
pub fn cgroup2_mounts(mountinfo: &str) -> Vec<PathBuf> {
    mounts_of_type(mountinfo, "cgroup2")
}

/// Mount points of filesystems of type `fstype` in mountinfo text.
pub fn mounts_of_type(mountinfo: &str, fstype: &str) -> Vec<PathBuf> {
    mountinfo
        .lines()
        .filter_map(|l| {
            // "<id> <parent> <maj:min> <root> <mount point> <opts> [optional...] - <fstype> ..."
            let (pre, post) = l.split_once(" - ")?;
            (post.split(' ').next()? == fstype).then(|| {
                let mount_point = pre.split(' ').nth(4)?;
                Some(PathBuf::from(unescape_mountinfo(mount_point)))
            })?
        })
        .collect()
}

/// mountinfo escapes space, tab, newline and backslash as `\ooo`.
fn unescape_mountinfo(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && let Some(oct) = s.get(i + 1..i + 4)
            && let Ok(v) = u8::from_str_radix(oct, 8)
        {
            out.push(v);
            i += 4;
            continue;
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// How long a failed cgroup id lookup is remembered before the tree is walked again: a burst
/// of connections from an unknown cgroup must not turn into a burst of tree walks.
const NEGATIVE_TTL: Duration = Duration::from_secs(2);

#[derive(Default)]
struct Caches {
    users: HashMap<u32, String>,
    passwd_mtime: Option<SystemTime>,
    cgroups: HashMap<u64, String>,
    missing_cgroups: HashMap<u64, Instant>,
}

/// Fills a [`Workload`]'s names from the host, with caches.
pub struct WorkloadResolver {
    cgroup_root: Option<PathBuf>,
    passwd: PathBuf,
    proc_root: PathBuf,
    caches: Mutex<Caches>,
}

impl std::fmt::Debug for WorkloadResolver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WorkloadResolver")
            .field("cgroup_root", &self.cgroup_root)
            .finish()
    }
}

impl WorkloadResolver {
    /// A resolver over the cgroup v2 hierarchy mounted at `cgroup_root`, or the first cgroup2
    /// mount in /proc/self/mountinfo when `None` (no mount: cgroup paths stay unresolved).
    pub fn new(cgroup_root: Option<PathBuf>) -> Self {
        let cgroup_root = cgroup_root.or_else(|| {
            std::fs::read_to_string("/proc/self/mountinfo")
                .ok()
                .and_then(|m| cgroup2_mounts(&m).into_iter().next())
        });
        Self {
            cgroup_root,
            passwd: PathBuf::from("/etc/passwd"),
            proc_root: PathBuf::from("/proc"),
            caches: Mutex::new(Caches::default()),
        }
    }

    /// Reads other processes under `proc_root` (the host's /proc mounted in a container).
    pub fn with_proc_root(mut self, proc_root: PathBuf) -> Self {
        self.proc_root = proc_root;
        self
    }

    /// The cgroup v2 root in use.
    pub fn cgroup_root(&self) -> Option<&Path> {
        self.cgroup_root.as_deref()
    }

    /// Fills `user` and `cgroup_path` where they are unset and can be resolved.
    pub fn resolve(&self, w: &mut Workload) {
        if w.user.is_none() {
            w.user = self.user_name(w.uid);
        }
        if w.cgroup_path.is_none() && w.cgroup_id != 0 {
            w.cgroup_path = self.cgroup_path(w.cgroup_id, Some(w.tgid));
        }
    }

    /// The user name of `uid` from /etc/passwd (reloaded when the file changes).
    pub fn user_name(&self, uid: u32) -> Option<String> {
        let mut c = self.caches.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(name) = c.users.get(&uid) {
            return Some(name.clone());
        }
        let mtime = std::fs::metadata(&self.passwd)
            .and_then(|m| m.modified())
            .ok();
        if c.passwd_mtime.is_none() || mtime != c.passwd_mtime {
            match std::fs::read_to_string(&self.passwd) {
                Ok(text) => {
                    c.users = parse_passwd(&text);
                    c.passwd_mtime = mtime;
                }
                Err(e) => {
                    tracing::warn!(path = %self.passwd.display(), error = %e, "cannot read passwd");
                }
            }
        }
        c.users.get(&uid).cloned()
    }

    /// The cgroup path (relative to the root, starting with `/`) of cgroup `id`. Tries
    /// `/proc/<tgid>/cgroup` when `tgid` is given, accepting it only if that directory's inode
    /// is `id` (the process may have moved, or its pid been reused); else walks the hierarchy.
    pub fn cgroup_path(&self, id: u64, tgid: Option<u32>) -> Option<String> {
        let root = self.cgroup_root.as_deref()?;
        {
            let c = self.caches.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(p) = c.cgroups.get(&id) {
                return Some(p.clone());
            }
            if let Some(t) = c.missing_cgroups.get(&id)
                && t.elapsed() < NEGATIVE_TTL
            {
                return None;
            }
        }
        if let Some(tgid) = tgid
            && let Ok(text) = std::fs::read_to_string(self.proc_root.join(format!("{tgid}/cgroup")))
            && let Some(path) = parse_proc_cgroup(&text)
            && inode(&root.join(path.trim_start_matches('/'))) == Some(id)
        {
            let path = path.to_string();
            let mut c = self.caches.lock().unwrap_or_else(|e| e.into_inner());
            c.cgroups.insert(id, path.clone());
            return Some(path);
        }
        // Walk the whole tree, caching every directory seen: the next new cgroup is then
        // usually a hit.
        let mut found = HashMap::new();
        walk(root, root, &mut found);
        let mut c = self.caches.lock().unwrap_or_else(|e| e.into_inner());
        // Cgroups come and go; keep the cache to what exists now.
        c.cgroups = found;
        match c.cgroups.get(&id).cloned() {
            Some(p) => {
                c.missing_cgroups.remove(&id);
                Some(p)
            }
            None => {
                c.missing_cgroups.retain(|_, t| t.elapsed() < NEGATIVE_TTL);
                c.missing_cgroups.insert(id, Instant::now());
                None
            }
        }
    }
}

fn inode(path: &Path) -> Option<u64> {
    std::fs::metadata(path).ok().map(|m| m.ino())
}

/// Records `inode → path` for `dir` and every directory below it. Symlinks are not followed
/// (cgroupfs has none; a bind-mounted test tree must not loop).
fn walk(root: &Path, dir: &Path, out: &mut HashMap<u64, String>) {
    let Ok(meta) = std::fs::symlink_metadata(dir) else {
        return;
    };
    let rel = dir
        .strip_prefix(root)
        .map(|p| format!("/{}", p.display()))
        .unwrap_or_else(|_| "/".into());
    out.insert(meta.ino(), rel);
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        if e.file_type().is_ok_and(|t| t.is_dir()) {
            walk(root, &e.path(), out);
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const DOCKER_ID: &str = "4f2c9e1d5a7b3c8e0f6a1b2c3d4e5f60718293a4b5c6d7e8f9012a3b4c5d6e7f";
    const POD: &str = "0b1e7ab2-3c4d-4e5f-8a9b-c0d1e2f3a4b5";

    #[test]
    fn systemd_units() {
        let cases = [
            ("/system.slice/nginx.service", Some("nginx.service")),
            (
                "/system.slice/ci-runner@3.service",
                Some("ci-runner@3.service"),
            ),
            (
                "/user.slice/user-1000.slice/user@1000.service/app.slice/app-gnome-firefox-1234.scope",
                Some("app-gnome-firefox-1234.scope"),
            ),
            (
                "/user.slice/user-1000.slice/session-3.scope",
                Some("session-3.scope"),
            ),
            // A delegated sub-cgroup below the unit.
            (
                "/system.slice/buildkitd.service/runc-abc",
                Some("buildkitd.service"),
            ),
            ("/system.slice", None),
            ("/", None),
            ("/docker/abc", None),
        ];
        for (path, unit) in cases {
            assert_eq!(systemd_unit(path), unit, "{path}");
        }
    }

    #[test]
    fn container_ids_of_every_runtime() {
        let cases = [
            // docker, cgroupfs and systemd drivers
            (format!("/docker/{DOCKER_ID}"), Some(DOCKER_ID)),
            (
                format!("/system.slice/docker-{DOCKER_ID}.scope"),
                Some(DOCKER_ID),
            ),
            // kubernetes + containerd, systemd driver
            (
                format!(
                    "/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{}.slice/cri-containerd-{DOCKER_ID}.scope",
                    POD.replace('-', "_")
                ),
                Some(DOCKER_ID),
            ),
            // kubernetes + cri-o, systemd driver
            (
                format!(
                    "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{}.slice/crio-{DOCKER_ID}.scope",
                    POD.replace('-', "_")
                ),
                Some(DOCKER_ID),
            ),
            // kubernetes, cgroupfs driver
            (
                format!("/kubepods/besteffort/pod{POD}/{DOCKER_ID}"),
                Some(DOCKER_ID),
            ),
            // podman, with its inner `container` cgroup
            (
                format!("/machine.slice/libpod-{DOCKER_ID}.scope/container"),
                Some(DOCKER_ID),
            ),
            // cri-o's monitor process is not the container
            (
                format!(
                    "/kubepods.slice/kubepods-pod{}.slice/crio-conmon-{DOCKER_ID}.scope",
                    POD.replace('-', "_")
                ),
                None,
            ),
            ("/system.slice/docker.service".to_string(), None),
            (format!("/docker/{}", &DOCKER_ID[..63]), None),
        ];
        for (path, id) in &cases {
            assert_eq!(container_id(path), *id, "{path}");
        }
    }

    #[test]
    fn pod_uids_of_both_drivers() {
        let u = POD.replace('-', "_");
        let cases = [
            (
                format!("/kubepods/besteffort/pod{POD}/{DOCKER_ID}"),
                Some(POD),
            ),
            (format!("/kubepods/pod{POD}/{DOCKER_ID}"), Some(POD)),
            (
                format!(
                    "/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{u}.slice/cri-containerd-{DOCKER_ID}.scope"
                ),
                Some(POD),
            ),
            // Guaranteed QoS has no QoS slice.
            (
                format!("/kubepods.slice/kubepods-pod{u}.slice/crio-{DOCKER_ID}.scope"),
                Some(POD),
            ),
            (
                format!("/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{u}.slice"),
                Some(POD),
            ),
            (
                "/kubepods.slice/kubepods-besteffort.slice".to_string(),
                None,
            ),
            (format!("/system.slice/pod{POD}.service"), None),
            ("/kubepods/podnot-a-uid".to_string(), None),
            // Named like a pod where any user may make cgroups: not a pod.
            (
                format!("/user.slice/user-1000.slice/user@1000.service/pod{POD}"),
                None,
            ),
            (
                format!("/user.slice/user-1000.slice/user@1000.service/kubepods/pod{POD}"),
                None,
            ),
            (
                format!(
                    "/user.slice/user-1000.slice/user@1000.service/app.slice/kubepods-pod{u}.slice"
                ),
                None,
            ),
            (format!("/kubepods/besteffort/x/pod{POD}"), None),
        ];
        for (path, uid) in &cases {
            assert_eq!(pod_uid(path).as_deref(), *uid, "{path}");
        }
        let info = describe(&cases[2].0);
        assert_eq!(info.pod_uid.as_deref(), Some(POD));
        assert_eq!(info.container_id.as_deref(), Some(DOCKER_ID));
        assert_eq!(info.unit, Some(format!("cri-containerd-{DOCKER_ID}.scope")));
    }

    #[test]
    fn proc_cgroup_passwd_and_mountinfo() {
        let v2 = "0::/system.slice/ssh.service\n";
        assert_eq!(parse_proc_cgroup(v2), Some("/system.slice/ssh.service"));
        let hybrid =
            "12:pids:/\n1:name=systemd:/user.slice\n0::/user.slice/user-0.slice/session-1.scope\n";
        assert_eq!(
            parse_proc_cgroup(hybrid),
            Some("/user.slice/user-0.slice/session-1.scope")
        );
        assert_eq!(parse_proc_cgroup("9:name=systemd:/\n"), None);

        let passwd = "root:x:0:0:root:/root:/bin/bash\n# comment\nbad line\npostgres:x:105:111::/var/lib/postgresql:/bin/bash\ntoor:x:0:0::/:/bin/sh\n";
        let m = parse_passwd(passwd);
        assert_eq!(m[&0], "root");
        assert_eq!(m[&105], "postgres");
        assert_eq!(m.len(), 2);

        let mi = "31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw\n\
                  40 31 0:37 / /sys/fs/cgroup/systemd rw - cgroup cgroup rw,name=systemd\n\
                  90 23 0:55 / /run/my\\040cg rw,relatime shared:1 - cgroup2 none rw\n";
        assert_eq!(cgroup2_mounts(mi), [PathBuf::from("/run/my cg")]);
    }

    #[test]
    fn resolves_real_uid_and_cgroup_ids_by_inode() {
        // The real /etc/passwd: uid 0 is root on every Linux.
        let r = WorkloadResolver::new(None);
        assert_eq!(r.user_name(0).as_deref(), Some("root"));
        assert_eq!(r.user_name(4_000_000_000), None);

        // A directory tree standing in for the cgroup mount: the lookup is by inode, the
        // mechanism the kernel's cgroup id relies on.
        let root = std::env::temp_dir().join(format!("airlock-cg-{}", std::process::id()));
        let leaf = root.join("kubepods.slice/kubepods-pod1.slice/cri-containerd-x.scope");
        std::fs::create_dir_all(&leaf).unwrap();
        let r = WorkloadResolver::new(Some(root.clone()));
        let id = std::fs::metadata(&leaf).unwrap().ino();
        assert_eq!(
            r.cgroup_path(id, None).as_deref(),
            Some("/kubepods.slice/kubepods-pod1.slice/cri-containerd-x.scope")
        );
        let root_id = std::fs::metadata(&root).unwrap().ino();
        assert_eq!(r.cgroup_path(root_id, None).as_deref(), Some("/"));
        assert_eq!(r.cgroup_path(1, None), None);

        // A cgroup created after the first walk is found by the next walk, and a cached id is
        // answered even once the tree is gone.
        let late = root.join("system.slice/late.service");
        std::fs::create_dir_all(&late).unwrap();
        let late_id = std::fs::metadata(&late).unwrap().ino();
        assert_eq!(
            r.cgroup_path(late_id, None).as_deref(),
            Some("/system.slice/late.service")
        );
        std::fs::remove_dir_all(&root).unwrap();
        assert_eq!(
            r.cgroup_path(late_id, None).as_deref(),
            Some("/system.slice/late.service")
        );

        let mut w = Workload {
            uid: 0,
            cgroup_id: 12345,
            ..Workload::default()
        };
        r.resolve(&mut w);
        assert_eq!(w.user.as_deref(), Some("root"));
        assert_eq!(w.cgroup_path, None);
    }
}
