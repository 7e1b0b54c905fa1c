//! Removing a job directory whatever a job left in it: [`remove_tree`].
//!
//! A job owns its directory and may fill it with anything: a tree nested a
//! hundred thousand levels deep, a directory it made unreadable, links. A
//! recursive removal that holds a descriptor (or a path) per level runs out of
//! descriptors (or past `PATH_MAX`) on such a tree, and gc could then never
//! reclaim the job. This one holds at most [`HELD_LEVELS`] directories open:
//! a directory deeper than that is first moved up to the top of the tree
//! being removed (a rename inside it) and removed from there. Every step is
//! relative to a descriptor of a directory inside the tree and names one entry
//! without following links, so nothing outside the tree is ever touched, even
//! while a process the job left behind keeps moving things around in it.

use nix::dir::{Dir, Type};
use nix::errno::Errno;
use nix::fcntl::{openat, renameat2, OFlag, RenameFlags};
use nix::sys::stat::{fchmodat, fstatat, FchmodatFlags, Mode, SFlag};
use nix::unistd::{unlinkat, UnlinkatFlags};
use std::ffi::{CStr, CString};
use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::Path;

/// Directories held open at once while removing: past this depth a
/// directory is moved up to the top instead of entered.
pub(crate) const HELD_LEVELS: usize = 16;

/// Entries read from a directory before they are removed: a directory of
/// millions of files costs this much memory, not millions of names.
const BATCH: usize = 4096;

/// Removes the directory `dir` and everything in it, never following a
/// symlink (a link is removed, not its target), at any depth of nesting and
/// with at most [`HELD_LEVELS`] directories open. A directory the job made
/// unreadable is made readable first (it is ours to remove). `NotFound` if
/// `dir` is not there.
pub(crate) fn remove_tree(dir: &Path) -> io::Result<()> {
    let root = super::open_dir_nofollow(dir)?;
    writable(&root)?;
    let mut moved = 0u64;
    clear(&root, &root, 0, &mut moved)?;
    drop(root);
    std::fs::remove_dir(dir)
}

/// Removes everything in the directory open as `fd`, `depth` levels below
/// `root`: files and links are unlinked, directories emptied the same way
/// and removed, and a directory at [`HELD_LEVELS`] is moved up into `root`
/// (`moved` numbers their new names), whose own listing then reaches it.
fn clear(root: &OwnedFd, fd: &OwnedFd, depth: usize, moved: &mut u64) -> io::Result<()> {
    loop {
        let batch = list(fd)?;
        if batch.is_empty() {
            return Ok(());
        }
        let mut gone = 0;
        for (name, kind) in &batch {
            if remove_entry(root, fd, name, *kind, depth, moved)? {
                gone += 1;
            }
        }
        if gone == 0 {
            // Each pass must remove something: what stays (a directory refilled
            // as fast as it is emptied) is an error, not a loop forever.
            return Err(io::Error::other(format!(
                "{} entries could not be removed",
                batch.len()
            )));
        }
    }
}

/// Removes the entry `name` of the directory open as `fd` (see [`clear`]);
/// false when it is still there (refilled while being emptied).
fn remove_entry(
    root: &OwnedFd,
    fd: &OwnedFd,
    name: &CStr,
    kind: Option<Type>,
    depth: usize,
    moved: &mut u64,
) -> io::Result<bool> {
    let is_dir = match kind {
        Some(t) => t == Type::Directory,
        // The file system does not say (DT_UNKNOWN): ask without following.
        None => match fstatat(fd, name, nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW) {
            Ok(st) => SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT == SFlag::S_IFDIR,
            Err(Errno::ENOENT) => return Ok(true),
            Err(e) => return Err(e.into()),
        },
    };
    if !is_dir {
        return gone(unlinkat(fd, name, UnlinkatFlags::NoRemoveDir));
    }
    if depth + 1 >= HELD_LEVELS {
        return move_up(root, fd, name, moved);
    }
    let child = match open_child(fd, name) {
        Ok(c) => c,
        Err(Errno::ENOENT) => return Ok(true),
        // Swapped for a file or a link since it was listed: unlink that.
        Err(Errno::ENOTDIR | Errno::ELOOP) => {
            return gone(unlinkat(fd, name, UnlinkatFlags::NoRemoveDir))
        }
        Err(e) => return Err(e.into()),
    };
    writable(&child)?;
    clear(root, &child, depth + 1, moved)?;
    drop(child);
    match unlinkat(fd, name, UnlinkatFlags::RemoveDir) {
        Ok(()) | Err(Errno::ENOENT) => Ok(true),
        // Refilled meanwhile: the next listing of `fd` finds it again.
        Err(Errno::ENOTEMPTY | Errno::EEXIST) => Ok(false),
        Err(e) => Err(e.into()),
    }
}

/// Opens the directory `name` of `fd` to list it, never through a link; one
/// the job made unreadable is given back its owner's permissions first.
fn open_child(fd: &OwnedFd, name: &CStr) -> Result<OwnedFd, Errno> {
    match open_dir_at(fd, name) {
        Err(Errno::EACCES) => {
            fchmodat(fd, name, Mode::S_IRWXU, FchmodatFlags::NoFollowSymlink)?;
            open_dir_at(fd, name)
        }
        other => other,
    }
}

/// Opens the directory `name` of `fd`, never through a link.
fn open_dir_at<Fd: AsFd>(fd: Fd, name: &CStr) -> Result<OwnedFd, Errno> {
    let flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
    openat(fd, name, flags, Mode::empty())
}

/// Gives the directory open as `fd` its owner's write and search rights if
/// it lacks them: a job may leave read-only trees (Go's module cache is one),
/// whose entries could not be unlinked otherwise.
fn writable(fd: &OwnedFd) -> io::Result<()> {
    let mode = nix::sys::stat::fstat(fd)?.st_mode;
    if mode & 0o300 != 0o300 {
        let mode = Mode::from_bits_truncate(mode | 0o700);
        nix::sys::stat::fchmod(fd, mode)?;
    }
    Ok(())
}

/// Moves the directory `name` of `fd` into `root` under a name no entry has
/// (`.deep-N`), so it is removed from there with few directories open.
fn move_up(root: &OwnedFd, fd: &OwnedFd, name: &CStr, moved: &mut u64) -> io::Result<bool> {
    // Moving a directory to another parent rewrites its `..`: it must be
    // writable (a read-only one, as Go's module cache leaves, is made so).
    match fstatat(fd, name, nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW) {
        Ok(st) if st.st_mode & 0o700 != 0o700 => {
            let mode = Mode::from_bits_truncate(st.st_mode | 0o700);
            match fchmodat(fd, name, mode, FchmodatFlags::NoFollowSymlink) {
                Ok(()) | Err(Errno::ENOENT) => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(_) => {}
        Err(Errno::ENOENT) => return Ok(true),
        Err(e) => return Err(e.into()),
    }
    loop {
        *moved += 1;
        let to = CString::new(format!(".deep-{}", *moved)).expect("no NUL in a number");
        match renameat2(fd, name, root, to.as_c_str(), RenameFlags::RENAME_NOREPLACE) {
            Ok(()) | Err(Errno::ENOENT) => return Ok(true),
            Err(Errno::EEXIST) => continue, // the job has a `.deep-N` of its own
            // Without RENAME_NOREPLACE: a plain rename, after looking first
            // (the tree is the collector's alone by now; a race only fails it).
            Err(Errno::EINVAL | Errno::ENOSYS) => {
                match fstatat(
                    root,
                    to.as_c_str(),
                    nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
                ) {
                    Err(Errno::ENOENT) => {}
                    _ => continue,
                }
                return gone(nix::fcntl::renameat(fd, name, root, to.as_c_str()));
            }
            Err(e) => return Err(e.into()),
        }
    }
}

/// Disk usage of everything inside `dir`, as `du` counts it (a link counts
/// as itself, never followed), down to `max_depth` levels; the flag says there
/// is more below, not counted. Each level is opened relative to the one above,
/// so neither the depth nor long names make a path too long. Entries that
/// vanish meanwhile are not an error; `dir` itself missing is (`NotFound`).
pub(crate) fn usage(dir: &Path, max_depth: usize) -> io::Result<(u64, bool)> {
    let root = super::open_dir_nofollow(dir)?;
    let mut deep = false;
    let total = usage_of(root, 0, max_depth, &mut deep)?;
    Ok((total, deep))
}

/// [`usage`] of the directory open as `fd`, `depth` levels down: one
/// descriptor per level.
fn usage_of(fd: OwnedFd, depth: usize, max_depth: usize, deep: &mut bool) -> io::Result<u64> {
    let mut total = 0u64;
    let mut dir = Dir::from_fd(fd)?;
    // SAFETY: `dir` owns the descriptor and keeps it open until it is dropped
    // at the end of this function, after every use of `fd`; reading entries
    // does not close it.
    let fd = unsafe { std::os::fd::BorrowedFd::borrow_raw(dir.as_raw_fd()) };
    for entry in dir.iter() {
        let entry = entry?;
        let name = entry.file_name();
        if name == c"." || name == c".." {
            continue;
        }
        let st = match fstatat(fd, name, nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW) {
            Ok(st) => st,
            Err(Errno::ENOENT) => continue,
            Err(e) => return Err(e.into()),
        };
        total = total.saturating_add((st.st_blocks as u64).saturating_mul(512));
        if SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT != SFlag::S_IFDIR {
            continue;
        }
        if depth >= max_depth {
            *deep = true;
            continue;
        }
        match open_dir_at(fd, name) {
            Ok(child) => total = total.saturating_add(usage_of(child, depth + 1, max_depth, deep)?),
            // Gone, or swapped for a file or a link, since it was listed.
            Err(Errno::ENOENT | Errno::ENOTDIR | Errno::ELOOP) => {}
            // Made unreadable by the job: not measured (measuring changes
            // nothing, a dry run included), but removed with the job.
            Err(Errno::EACCES) => *deep = true,
            Err(e) => return Err(e.into()),
        }
    }
    Ok(total)
}

/// True once an entry's removal went through or found it gone already.
fn gone(r: nix::Result<()>) -> io::Result<bool> {
    match r {
        Ok(()) | Err(Errno::ENOENT) => Ok(true),
        Err(e) => Err(e.into()),
    }
}

/// Up to [`BATCH`] entries of the directory open as `fd` (not `.` or `..`),
/// with their type when the file system gives it.
fn list(fd: &OwnedFd) -> io::Result<Vec<(CString, Option<Type>)>> {
    let flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC;
    let mut dir = Dir::openat(fd.as_fd(), c".", flags, Mode::empty())?;
    let mut out = Vec::new();
    for entry in dir.iter() {
        let entry = entry?;
        let name = entry.file_name();
        if name == c"." || name == c".." {
            continue;
        }
        out.push((name.to_owned(), entry.file_type()));
        if out.len() == BATCH {
            break;
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn temp(tag: &str) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("logwrap-tree-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    /// A chain of `depth` directories with 200-byte names under `top`, made
    /// relative to the last one each time (its path passes `PATH_MAX` at
    /// the 21st), a file at every level.
    fn chain(top: &Path, depth: usize) {
        let name = CString::new("d".repeat(200)).unwrap();
        let mut fd =
            nix::fcntl::open(top, OFlag::O_RDONLY | OFlag::O_DIRECTORY, Mode::empty()).unwrap();
        for _ in 0..depth {
            nix::sys::stat::mkdirat(&fd, name.as_c_str(), Mode::S_IRWXU).unwrap();
            let f = openat(&fd, c"f", OFlag::O_CREAT | OFlag::O_WRONLY, Mode::S_IRUSR).unwrap();
            drop(f);
            let flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY;
            fd = openat(&fd, name.as_c_str(), flags, Mode::empty()).unwrap();
        }
    }

    #[test]
    fn a_tree_nested_far_past_path_max_and_open_descriptors_is_removed() {
        let top = temp("deep");
        let job = top.join("job");
        std::fs::create_dir(&job).unwrap();
        // 300 levels: 60 KB of path, and many times the levels held open.
        chain(&job, 300);
        // The job's own `.deep-1` is kept apart from the moved directories.
        std::fs::create_dir_all(job.join(".deep-1/x")).unwrap();
        // A directory of many entries, read a batch at a time.
        let wide = job.join("wide");
        std::fs::create_dir(&wide).unwrap();
        for i in 0..(BATCH + 10) {
            std::fs::write(wide.join(i.to_string()), b"").unwrap();
        }
        remove_tree(&job).unwrap();
        assert!(!job.exists());
        std::fs::remove_dir(&top).unwrap();
    }

    #[test]
    fn links_are_removed_never_followed_and_unreadable_dirs_are_opened() {
        let top = temp("links");
        let outside = top.join("outside");
        std::fs::create_dir(&outside).unwrap();
        std::fs::write(outside.join("keep"), b"keep").unwrap();
        let job = top.join("job");
        std::fs::create_dir_all(job.join("a/locked/inner")).unwrap();
        std::fs::write(job.join("a/locked/inner/f"), b"x").unwrap();
        std::os::unix::fs::symlink(&outside, job.join("a/to-outside")).unwrap();
        std::os::unix::fs::symlink(&outside, job.join("a/locked/inner/link")).unwrap();
        std::fs::set_permissions(job.join("a/locked"), std::fs::Permissions::from_mode(0o000))
            .unwrap();
        remove_tree(&job).unwrap();
        assert!(!job.exists());
        assert_eq!(std::fs::read(outside.join("keep")).unwrap(), b"keep");
        std::fs::remove_dir_all(&top).unwrap();
    }

    #[test]
    fn a_missing_directory_is_not_found_and_a_link_to_one_is_refused() {
        let top = temp("missing");
        let err = remove_tree(&top.join("nothing")).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::NotFound);
        std::fs::create_dir(top.join("real")).unwrap();
        std::os::unix::fs::symlink(top.join("real"), top.join("link")).unwrap();
        assert!(remove_tree(&top.join("link")).is_err());
        assert!(top.join("real").is_dir(), "the link's target is untouched");
        std::fs::remove_dir_all(&top).unwrap();
    }
}
