//! Batched UDP I/O with `recvmmsg` / `sendmmsg`: many datagrams per system
//! call. Under load most of a UDP echo's cost is the kernel crossing per
//! datagram; taking up to [`BATCH`] datagrams per call and sending all the
//! replies of a batch in one call is the cheapest way to cut it.

use std::io;
use std::mem::{size_of, zeroed};
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::RawFd;

/// Datagrams per system call.
pub(crate) const BATCH: usize = 32;
/// Bytes per receive slot: the largest UDP payload fits.
const SLOT: usize = 65_536;

/// Receive slots and reply queue for one UDP socket.
pub(crate) struct Batch {
    bufs: Vec<u8>,
    lens: [usize; BATCH],
    addrs: [libc::sockaddr_storage; BATCH],
    received: usize,
    /// Replies waiting for `flush`: bytes, their ends, and destinations.
    out: Vec<u8>,
    out_ends: Vec<usize>,
    out_dest: Vec<SocketAddr>,
}

impl Batch {
    pub(crate) fn new() -> Box<Batch> {
        Box::new(Batch {
            bufs: vec![0u8; BATCH * SLOT],
            lens: [0; BATCH],
            // SAFETY: sockaddr_storage is plain old data; zero is valid.
            addrs: unsafe { zeroed() },
            received: 0,
            out: Vec::new(),
            out_ends: Vec::new(),
            out_dest: Vec::new(),
        })
    }

    /// Receives up to [`BATCH`] datagrams without waiting. Returns how many.
    pub(crate) fn recv(&mut self, fd: RawFd) -> io::Result<usize> {
        // SAFETY: zeroed iovec/mmsghdr arrays are valid; every pointer set
        // below points into `self`, which outlives the call.
        unsafe {
            let mut iov: [libc::iovec; BATCH] = zeroed();
            let mut msgs: [libc::mmsghdr; BATCH] = zeroed();
            for i in 0..BATCH {
                iov[i].iov_base = self.bufs.as_mut_ptr().add(i * SLOT).cast();
                iov[i].iov_len = SLOT;
                msgs[i].msg_hdr.msg_iov = &mut iov[i];
                msgs[i].msg_hdr.msg_iovlen = 1;
                msgs[i].msg_hdr.msg_name =
                    (&mut self.addrs[i] as *mut libc::sockaddr_storage).cast();
                msgs[i].msg_hdr.msg_namelen = size_of::<libc::sockaddr_storage>() as u32;
            }
            let n = libc::recvmmsg(
                fd,
                msgs.as_mut_ptr(),
                BATCH as u32,
                libc::MSG_DONTWAIT,
                std::ptr::null_mut(),
            );
            if n < 0 {
                self.received = 0;
                return Err(io::Error::last_os_error());
            }
            let n = n as usize;
            for (len, msg) in self.lens.iter_mut().zip(msgs.iter()).take(n) {
                *len = (msg.msg_len as usize).min(SLOT);
            }
            self.received = n;
            Ok(n)
        }
    }

    /// Datagram `i` of the last `recv` and its sender.
    pub(crate) fn datagram(&self, i: usize) -> Option<(&[u8], SocketAddr)> {
        if i >= self.received {
            return None;
        }
        let addr = from_storage(&self.addrs[i])?;
        Some((&self.bufs[i * SLOT..i * SLOT + self.lens[i]], addr))
    }

    /// Queues replies built by a handler: `bytes[..ends[0]]`, ... to `dest`.
    pub(crate) fn queue(&mut self, bytes: &[u8], ends: &[usize], dest: SocketAddr) {
        let mut start = 0;
        for &end in ends {
            self.out.extend_from_slice(&bytes[start..end]);
            self.out_ends.push(self.out.len());
            self.out_dest.push(dest);
            start = end;
        }
    }

    /// Sends every queued reply, [`BATCH`] per call, without waiting: when
    /// the socket's send buffer is full the remaining replies are dropped
    /// (UDP promises no delivery) and the error says so.
    pub(crate) fn flush(&mut self, fd: RawFd) -> io::Result<()> {
        let mut first = 0;
        let mut result = Ok(());
        while first < self.out_ends.len() {
            let count = (self.out_ends.len() - first).min(BATCH);
            // SAFETY: arrays are zeroed then filled with pointers into
            // `self.out` and `names`, all alive during the call.
            let sent = unsafe {
                let mut iov: [libc::iovec; BATCH] = zeroed();
                let mut msgs: [libc::mmsghdr; BATCH] = zeroed();
                let mut names: [libc::sockaddr_storage; BATCH] = zeroed();
                for k in 0..count {
                    let i = first + k;
                    let start = if i == 0 { 0 } else { self.out_ends[i - 1] };
                    let end = self.out_ends[i];
                    iov[k].iov_base = self.out.as_ptr().add(start) as *mut libc::c_void;
                    iov[k].iov_len = end - start;
                    let len = to_storage(&self.out_dest[i], &mut names[k]);
                    msgs[k].msg_hdr.msg_iov = &mut iov[k];
                    msgs[k].msg_hdr.msg_iovlen = 1;
                    msgs[k].msg_hdr.msg_name =
                        (&mut names[k] as *mut libc::sockaddr_storage).cast();
                    msgs[k].msg_hdr.msg_namelen = len;
                }
                libc::sendmmsg(fd, msgs.as_mut_ptr(), count as u32, libc::MSG_DONTWAIT)
            };
            if sent < 0 {
                let e = io::Error::last_os_error();
                match e.kind() {
                    io::ErrorKind::Interrupted => continue,
                    io::ErrorKind::WouldBlock => {
                        // The socket's send buffer is full. This runs on an
                        // event loop that must not block: the rest of the
                        // replies are dropped, as UDP allows.
                        result = Err(e);
                        break;
                    }
                    _ => {
                        // One bad destination must not drop the others:
                        // skip it and go on.
                        result = Err(e);
                        first += 1;
                        continue;
                    }
                }
            }
            first += sent.max(1) as usize;
        }
        self.out.clear();
        self.out_ends.clear();
        self.out_dest.clear();
        result
    }
}

fn from_storage(s: &libc::sockaddr_storage) -> Option<SocketAddr> {
    match s.ss_family as i32 {
        libc::AF_INET => {
            // SAFETY: the family says this storage holds a sockaddr_in.
            let a = unsafe { &*(s as *const libc::sockaddr_storage).cast::<libc::sockaddr_in>() };
            Some(SocketAddr::V4(SocketAddrV4::new(
                Ipv4Addr::from(u32::from_be(a.sin_addr.s_addr)),
                u16::from_be(a.sin_port),
            )))
        }
        libc::AF_INET6 => {
            // SAFETY: the family says this storage holds a sockaddr_in6.
            let a = unsafe { &*(s as *const libc::sockaddr_storage).cast::<libc::sockaddr_in6>() };
            Some(SocketAddr::V6(SocketAddrV6::new(
                Ipv6Addr::from(a.sin6_addr.s6_addr),
                u16::from_be(a.sin6_port),
                a.sin6_flowinfo,
                a.sin6_scope_id,
            )))
        }
        _ => None,
    }
}

fn to_storage(addr: &SocketAddr, s: &mut libc::sockaddr_storage) -> libc::socklen_t {
    match addr {
        SocketAddr::V4(a) => {
            // SAFETY: sockaddr_storage is large enough for sockaddr_in.
            let sin =
                unsafe { &mut *(s as *mut libc::sockaddr_storage).cast::<libc::sockaddr_in>() };
            sin.sin_family = libc::AF_INET as libc::sa_family_t;
            sin.sin_port = a.port().to_be();
            sin.sin_addr.s_addr = u32::from(*a.ip()).to_be();
            size_of::<libc::sockaddr_in>() as libc::socklen_t
        }
        SocketAddr::V6(a) => {
            // SAFETY: sockaddr_storage is large enough for sockaddr_in6.
            let sin =
                unsafe { &mut *(s as *mut libc::sockaddr_storage).cast::<libc::sockaddr_in6>() };
            sin.sin6_family = libc::AF_INET6 as libc::sa_family_t;
            sin.sin6_port = a.port().to_be();
            sin.sin6_addr.s6_addr = a.ip().octets();
            sin.sin6_flowinfo = a.flowinfo();
            sin.sin6_scope_id = a.scope_id();
            size_of::<libc::sockaddr_in6>() as libc::socklen_t
        }
    }
}
