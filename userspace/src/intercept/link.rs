//! Adopting pinned cgroup links: a restarted or upgraded daemon swaps its freshly loaded
//! program into the link an earlier run pinned (`BPF_LINK_UPDATE`), so the hook is never
//! detached, not even for an instant, and never attached twice.
//!
//! aya opens pinned links but exposes neither their descriptor nor a link update for cgroup
//! programs, so the three `bpf(2)` commands used here are issued directly, with aya-obj's
//! kernel ABI types.

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use aya_obj::generated::{bpf_attr, bpf_cmd, bpf_link_info};

fn sys_bpf(cmd: bpf_cmd, attr: &mut bpf_attr) -> io::Result<i64> {
    // SAFETY: `attr` is a valid, zero-initialised bpf_attr of the size passed; the kernel
    // reads (and for some commands writes) only within it.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd as libc::c_long,
            attr as *mut bpf_attr,
            std::mem::size_of::<bpf_attr>(),
        )
    };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

/// Opens a pinned BPF object (`BPF_OBJ_GET`).
pub fn open_pinned(path: &Path) -> io::Result<OwnedFd> {
    let c_path = CString::new(path.as_os_str().as_bytes())
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    // SAFETY: all-zero is a valid bpf_attr.
    let mut attr: bpf_attr = unsafe { std::mem::zeroed() };
    // Plain integers into the union member this command reads.
    attr.__bindgen_anon_4.pathname = c_path.as_ptr() as u64;
    let fd = sys_bpf(bpf_cmd::BPF_OBJ_GET, &mut attr)?;
    let fd = i32::try_from(fd).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
    // SAFETY: the kernel returned a new descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// What the kernel says about a cgroup link.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CgroupLink {
    pub link_id: u32,
    pub program_id: u32,
    /// The cgroup it is attached to (0 once the cgroup is gone).
    pub cgroup_id: u64,
}

/// `BPF_OBJ_GET_INFO_BY_FD` on a link.
pub fn cgroup_link_info(link: BorrowedFd<'_>) -> io::Result<CgroupLink> {
    // SAFETY: all-zero is a valid bpf_link_info and bpf_attr.
    let mut info: bpf_link_info = unsafe { std::mem::zeroed() };
    let mut attr: bpf_attr = unsafe { std::mem::zeroed() };
    // Plain integers into the union member this command reads; `info` outlives the call and
    // has the length given.
    attr.info.bpf_fd = link.as_raw_fd() as u32;
    attr.info.info_len = std::mem::size_of::<bpf_link_info>() as u32;
    attr.info.info = std::ptr::addr_of_mut!(info) as u64;
    sys_bpf(bpf_cmd::BPF_OBJ_GET_INFO_BY_FD, &mut attr)?;
    // SAFETY: for a cgroup link the kernel filled the `cgroup` member of the union; for any
    // other link type it holds other integers, which the caller rejects by cgroup id.
    let cgroup_id = unsafe { info.__bindgen_anon_1.cgroup.cgroup_id };
    Ok(CgroupLink {
        link_id: info.id,
        program_id: info.prog_id,
        cgroup_id,
    })
}

/// Atomically replaces the program of `link` with `program` (`BPF_LINK_UPDATE`). The link
/// stays attached throughout: each hook invocation runs either the old or the new program.
pub fn update(link: BorrowedFd<'_>, program: BorrowedFd<'_>) -> io::Result<()> {
    // SAFETY: all-zero is a valid bpf_attr.
    let mut attr: bpf_attr = unsafe { std::mem::zeroed() };
    // Plain integers into the union member this command reads.
    attr.link_update.link_fd = link.as_raw_fd() as u32;
    attr.link_update.__bindgen_anon_1.new_prog_fd = program.as_raw_fd() as u32;
    sys_bpf(bpf_cmd::BPF_LINK_UPDATE, &mut attr).map(drop)
}

/// What [`adopt`] did with a pin.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Adopted {
    /// The pinned link now runs `program`; it was never detached.
    Updated(CgroupLink),
    /// Nothing usable is pinned there (none, or a link to another cgroup): attach afresh.
    No,
}

/// Adopts the link pinned at `pin` if it is attached to `cgroup_id`, swapping `program` in.
pub fn adopt(pin: &Path, cgroup_id: u64, program: BorrowedFd<'_>) -> io::Result<Adopted> {
    let link = match open_pinned(pin) {
        Ok(fd) => fd,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Adopted::No),
        Err(e) => return Err(e),
    };
    let info = cgroup_link_info(std::os::fd::AsFd::as_fd(&link))?;
    if info.cgroup_id != cgroup_id {
        return Ok(Adopted::No);
    }
    update(std::os::fd::AsFd::as_fd(&link), program)?;
    Ok(Adopted::Updated(info))
}
