//! A deterministic newc (`070701`) cpio writer for the initramfs: fixed inode numbers,
//! mtime 0, owner root.

use std::io::{self, Write};

/// newc file type bits.
const S_IFDIR: u32 = 0o040000;
const S_IFREG: u32 = 0o100000;
const S_IFLNK: u32 = 0o120000;
const S_IFCHR: u32 = 0o020000;

/// Writes entries in the order given.
pub struct Writer<W: Write> {
    out: W,
    ino: u32,
    written: u64,
}

impl<W: Write> Writer<W> {
    pub fn new(out: W) -> Self {
        Writer {
            out,
            ino: 1,
            written: 0,
        }
    }

    fn header(
        &mut self,
        name: &str,
        mode: u32,
        size: u32,
        rdev: (u32, u32),
        nlink: u32,
    ) -> io::Result<()> {
        let h = format!(
            "070701{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}",
            self.ino,
            mode,
            0, // uid
            0, // gid
            nlink,
            0, // mtime
            size,
            0, // dev major
            0, // dev minor
            rdev.0,
            rdev.1,
            name.len() + 1,
            0, // check
        );
        self.ino += 1;
        self.raw(h.as_bytes())?;
        self.raw(name.as_bytes())?;
        self.raw(&[0])?;
        self.pad()
    }

    fn raw(&mut self, b: &[u8]) -> io::Result<()> {
        self.out.write_all(b)?;
        self.written += b.len() as u64;
        Ok(())
    }

    fn pad(&mut self) -> io::Result<()> {
        let n = (4 - (self.written % 4) as usize) % 4;
        self.raw(&[0u8; 3][..n])
    }

    /// A directory (`name` without leading `/`).
    pub fn dir(&mut self, name: &str, perm: u32) -> io::Result<()> {
        self.header(name, S_IFDIR | perm, 0, (0, 0), 2)
    }

    /// A regular file.
    pub fn file(&mut self, name: &str, perm: u32, data: &[u8]) -> io::Result<()> {
        let size = u32::try_from(data.len())
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "file over 4 GiB"))?;
        self.header(name, S_IFREG | perm, size, (0, 0), 1)?;
        self.raw(data)?;
        self.pad()
    }

    /// A symbolic link.
    pub fn symlink(&mut self, name: &str, target: &str) -> io::Result<()> {
        self.header(name, S_IFLNK | 0o777, target.len() as u32, (0, 0), 1)?;
        self.raw(target.as_bytes())?;
        self.pad()
    }

    /// A character device node.
    pub fn char_dev(&mut self, name: &str, perm: u32, major: u32, minor: u32) -> io::Result<()> {
        self.header(name, S_IFCHR | perm, 0, (major, minor), 1)
    }

    /// Write the trailer and return the inner writer.
    pub fn finish(mut self) -> io::Result<W> {
        self.header("TRAILER!!!", 0, 0, (0, 0), 1)?;
        Ok(self.out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_are_aligned_and_parseable() {
        let mut w = Writer::new(Vec::new());
        w.dir("dev", 0o755).unwrap();
        w.char_dev("dev/console", 0o600, 5, 1).unwrap();
        w.file("init", 0o755, b"hello").unwrap();
        w.symlink("sbin", "bin").unwrap();
        let out = w.finish().unwrap();
        assert_eq!(out.len() % 4, 0);
        // Walk the archive the way the kernel does.
        let mut off = 0;
        let mut names = Vec::new();
        loop {
            let h = std::str::from_utf8(&out[off..off + 110]).unwrap();
            assert_eq!(&h[..6], "070701");
            let field = |i: usize| u32::from_str_radix(&h[6 + i * 8..14 + i * 8], 16).unwrap();
            let (mode, size, rmaj, rmin, namesize) =
                (field(1), field(6), field(9), field(10), field(11));
            let name = std::str::from_utf8(&out[off + 110..off + 110 + namesize as usize - 1])
                .unwrap()
                .to_string();
            off = (off + 110 + namesize as usize).next_multiple_of(4);
            let data = &out[off..off + size as usize];
            off = (off + size as usize).next_multiple_of(4);
            if name == "dev/console" {
                assert_eq!((mode & 0o170000, rmaj, rmin), (S_IFCHR, 5, 1));
            }
            if name == "init" {
                assert_eq!(data, b"hello");
            }
            if name == "sbin" {
                assert_eq!(data, b"bin");
            }
            names.push(name.clone());
            if name == "TRAILER!!!" {
                break;
            }
        }
        assert_eq!(names, ["dev", "dev/console", "init", "sbin", "TRAILER!!!"]);
        assert_eq!(off, out.len());
    }
}
