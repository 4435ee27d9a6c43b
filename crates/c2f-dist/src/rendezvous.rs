//! Handing rank 0's 128-byte NCCL unique id to every rank, before NCCL can talk at all:
//!
//! - **TCP** ([`Rendezvous::Tcp`]): rank 0 listens on the master port (all interfaces), the
//!   other ranks connect (retrying until rank 0 is up) and say who they are; once all have
//!   arrived rank 0 sends each the id. So it is also a barrier: a rank that never arrives makes
//!   rank 0 fail after the timeout, and rank 0 tells the waiting ranks which one is missing.
//! - **File** ([`Rendezvous::File`], `file:PATH` on a filesystem every node shares, as llm.c
//!   does): rank 0 writes the id atomically (temporary file, fsync, rename), the others poll for
//!   it. Rank 0 refuses a file that already exists (an earlier run's id would send the others
//!   to a dead job); remove it with [`remove_rendezvous_file`] once the communicator is up.
//!
//! Wire format (TCP): each rank sends `C2FRV1`, its rank and the world size (u32 little-endian);
//! rank 0 answers `0` and the id, or `1`, a u32 length and a message.

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::thread::sleep;
use std::time::{Duration, Instant};

use crate::launch::{parse_master, Master};
use crate::nccl::UNIQUE_ID_BYTES;
use crate::{DistError, Result};

pub type UniqueId = [u8; UNIQUE_ID_BYTES];

/// How long ranks wait for each other by default: long enough for a slow node's start-up.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(300);

const MAGIC: &[u8; 6] = b"C2FRV1";
const HELLO_BYTES: usize = MAGIC.len() + 8;
/// How long past its own deadline a rank waits for rank 0's verdict, which names the missing
/// rank: rank 0's deadline may fall a moment after this rank's.
const VERDICT_GRACE: Duration = Duration::from_secs(2);
const POLL: Duration = Duration::from_millis(20);

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rendezvous {
    Tcp(Master),
    File(PathBuf),
}

impl Rendezvous {
    /// `file:PATH`, or `tcp:HOST[:PORT]`.
    pub fn parse(spec: &str) -> Result<Rendezvous> {
        if let Some(path) = spec.strip_prefix("file:") {
            if path.is_empty() {
                return Err(fail(format!("{spec:?} names no file")));
            }
            Ok(Rendezvous::File(PathBuf::from(path)))
        } else if let Some(master) = spec.strip_prefix("tcp:") {
            parse_master(master.trim_start_matches("//"), "--rendezvous")
                .map(Rendezvous::Tcp)
                .map_err(|e| fail(e.to_string()))
        } else {
            Err(fail(format!(
                "{spec:?} is neither file:PATH nor tcp:HOST[:PORT]"
            )))
        }
    }
}

fn fail(message: String) -> DistError {
    DistError::Rendezvous(message)
}

fn seconds(d: Duration) -> String {
    format!("{} s", d.as_secs_f64())
}

/// Rank 0 passes its `id` and gets it back; every other rank passes `None` and gets rank 0's.
/// Fails after `timeout` with a message naming what did not happen.
pub fn exchange_id(
    rendezvous: &Rendezvous,
    rank: usize,
    world: usize,
    id: Option<&UniqueId>,
    timeout: Duration,
) -> Result<UniqueId> {
    if rank >= world {
        return Err(fail(format!("rank {rank} is outside a world of {world}")));
    }
    match (rank, id, rendezvous) {
        (0, None, _) => Err(fail("rank 0 must bring the id".into())),
        (0, Some(id), _) if world == 1 => Ok(*id),
        (0, Some(id), Rendezvous::Tcp(m)) => serve(m.port, world, id, timeout).map(|()| *id),
        (0, Some(id), Rendezvous::File(path)) => write_id_file(path, world, id).map(|()| *id),
        (_, _, Rendezvous::Tcp(m)) => join(m, rank, world, timeout),
        (_, _, Rendezvous::File(path)) => read_id_file(path, rank, world, timeout),
    }
}

/// Rank 0's side of the TCP rendezvous.
fn serve(port: u16, world: usize, id: &UniqueId, timeout: Duration) -> Result<()> {
    let deadline = Instant::now() + timeout;
    let listener = TcpListener::bind(("0.0.0.0", port)).map_err(|e| {
        if e.kind() == ErrorKind::AddrInUse {
            fail(format!(
                "port {port} already in use on this host (another job, or an earlier run still \
                 closing?); choose another MASTER_PORT"
            ))
        } else {
            fail(format!("rank 0 cannot listen on port {port}: {e}"))
        }
    })?;
    listener
        .set_nonblocking(true)
        .map_err(|e| fail(format!("rank 0: port {port}: {e}")))?;
    let mut peers: Vec<Option<TcpStream>> = (0..world).map(|_| None).collect();
    let outcome = gather(&listener, &mut peers, world, timeout, deadline);
    let reply = match &outcome {
        Ok(()) => [&[0u8][..], id].concat(),
        Err(e) => {
            let message = e.to_string();
            let len = (message.len() as u32).to_le_bytes();
            [&[1u8][..], &len, message.as_bytes()].concat()
        }
    };
    for (rank, peer) in peers.iter_mut().enumerate() {
        if let Some(stream) = peer {
            // A peer that has gone cannot be told; on success the error is its rank's to see.
            if let Err(e) = stream.write_all(&reply) {
                if outcome.is_ok() {
                    return Err(fail(format!(
                        "rank 0 could not send the id to rank {rank}: {e}"
                    )));
                }
            }
        }
    }
    outcome
}

/// Accepts connections until every rank has said hello, or the deadline.
fn gather(
    listener: &TcpListener,
    peers: &mut [Option<TcpStream>],
    world: usize,
    timeout: Duration,
    deadline: Instant,
) -> Result<()> {
    while peers[1..].iter().any(Option::is_none) {
        match listener.accept() {
            Ok((stream, from)) => {
                let Some((rank, stream)) = hello(stream, from, world, deadline)? else {
                    continue;
                };
                if peers[rank].is_some() {
                    return Err(fail(format!(
                        "two processes claim rank {rank} (the second from {from})"
                    )));
                }
                peers[rank] = Some(stream);
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => {
                if Instant::now() >= deadline {
                    let missing: Vec<String> = (1..world)
                        .filter(|&r| peers[r].is_none())
                        .map(|r| r.to_string())
                        .collect();
                    return Err(fail(format!(
                        "{} {} did not arrive within {}",
                        if missing.len() == 1 { "rank" } else { "ranks" },
                        missing.join(", "),
                        seconds(timeout)
                    )));
                }
                sleep(POLL);
            }
            Err(e) => return Err(fail(format!("rank 0 could not accept a connection: {e}"))),
        }
    }
    Ok(())
}

/// Reads a connection's hello: its rank, or `None` for a stranger (ignored), or an error for a
/// rank of another shape of job.
fn hello(
    mut stream: TcpStream,
    from: SocketAddr,
    world: usize,
    deadline: Instant,
) -> Result<Option<(usize, TcpStream)>> {
    let wait = deadline
        .saturating_duration_since(Instant::now())
        .max(Duration::from_millis(100));
    let ready = stream
        .set_nonblocking(false)
        .and_then(|()| stream.set_read_timeout(Some(wait)));
    if ready.is_err() {
        return Ok(None);
    }
    Ok(read_hello(&mut stream, from, world)?.map(|rank| (rank, stream)))
}

/// Rank 0's reading of a hello from `from` (public for the fuzz tests): the rank, or `None` for
/// a stranger (too short, or not our magic), or an error for a rank of another shape of job.
pub fn read_hello(stream: &mut impl Read, from: SocketAddr, world: usize) -> Result<Option<usize>> {
    let mut buf = [0u8; HELLO_BYTES];
    if stream.read_exact(&mut buf).is_err() || &buf[..MAGIC.len()] != MAGIC {
        return Ok(None);
    }
    let word = |i: usize| u32::from_le_bytes(buf[MAGIC.len() + 4 * i..][..4].try_into().unwrap());
    let (rank, their_world) = (word(0) as usize, word(1) as usize);
    if their_world != world {
        return Err(fail(format!(
            "rank {rank} (from {from}) says the world has {their_world} ranks, rank 0 says {world}"
        )));
    }
    if rank == 0 || rank >= world {
        return Err(fail(format!(
            "a process at {from} claims rank {rank} in a world of {world}"
        )));
    }
    Ok(Some(rank))
}

/// A non-zero rank's side of the TCP rendezvous.
fn join(master: &Master, rank: usize, world: usize, timeout: Duration) -> Result<UniqueId> {
    let deadline = Instant::now() + timeout;
    let at = format!("{}:{}", master.addr, master.port);
    let addrs: Vec<SocketAddr> = (master.addr.as_str(), master.port)
        .to_socket_addrs()
        .map_err(|e| {
            fail(format!(
                "rank {rank} cannot resolve the master address {at}: {e}"
            ))
        })?
        .collect();
    let mut last_error = String::from("no address");
    let mut stream = loop {
        let attempt = addrs.iter().find_map(|a| {
            TcpStream::connect_timeout(a, Duration::from_secs(1))
                .map_err(|e| last_error = e.to_string())
                .ok()
        });
        if let Some(stream) = attempt {
            break stream;
        }
        if Instant::now() >= deadline {
            return Err(fail(format!(
                "rank {rank} could not reach rank 0 at {at} within {} (last error: {last_error})",
                seconds(timeout)
            )));
        }
        sleep(POLL * 5);
    };
    let mut hello = MAGIC.to_vec();
    hello.extend((rank as u32).to_le_bytes());
    hello.extend((world as u32).to_le_bytes());
    let answer_wait = deadline.saturating_duration_since(Instant::now()) + VERDICT_GRACE;
    stream
        .write_all(&hello)
        .and_then(|()| stream.set_read_timeout(Some(answer_wait)))
        .map_err(|e| lost(e, rank, &at, timeout))?;
    read_answer(&mut stream, rank, &at, timeout)
}

/// A rank's error for a connection to rank 0 at `at` that failed or timed out.
fn lost(e: std::io::Error, rank: usize, at: &str, timeout: Duration) -> DistError {
    if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) {
        fail(format!(
            "rank {rank}: rank 0 at {at} did not hand out the id within {}",
            seconds(timeout)
        ))
    } else {
        fail(format!(
            "rank {rank}: the connection to rank 0 at {at} failed: {e}"
        ))
    }
}

/// Rank `rank`'s reading of rank 0's answer from `at` (public for the fuzz tests): the id, or
/// rank 0's message (its length capped at 64 KiB), or an error for anything else.
pub fn read_answer(
    stream: &mut impl Read,
    rank: usize,
    at: &str,
    timeout: Duration,
) -> Result<UniqueId> {
    let failed = |e| lost(e, rank, at, timeout);
    let mut status = [0u8];
    stream.read_exact(&mut status).map_err(failed)?;
    match status[0] {
        0 => {
            let mut id = [0u8; UNIQUE_ID_BYTES];
            stream.read_exact(&mut id).map_err(failed)?;
            Ok(id)
        }
        1 => {
            let mut len = [0u8; 4];
            stream.read_exact(&mut len).map_err(failed)?;
            let mut message = vec![0u8; u32::from_le_bytes(len).min(1 << 16) as usize];
            stream.read_exact(&mut message).map_err(failed)?;
            Err(fail(format!(
                "rank {rank}: rank 0 gave up: {}",
                String::from_utf8_lossy(&message)
            )))
        }
        other => Err(fail(format!(
            "rank {rank}: rank 0 at {at} answered with unknown status {other}"
        ))),
    }
}

/// The id file's bytes: magic, world size, id.
fn id_file_bytes(world: usize, id: &UniqueId) -> Vec<u8> {
    [&MAGIC[..], &(world as u32).to_le_bytes(), id].concat()
}

fn write_id_file(path: &Path, world: usize, id: &UniqueId) -> Result<()> {
    if path.exists() {
        return Err(fail(format!(
            "rendezvous file {} already exists (left by an earlier run?); remove it or choose \
             another path",
            path.display()
        )));
    }
    c2f_inception::weights::write_atomically(path, &id_file_bytes(world, id))
        .map_err(|e| fail(format!("rank 0: {e}")))
}

fn read_id_file(path: &Path, rank: usize, world: usize, timeout: Duration) -> Result<UniqueId> {
    let deadline = Instant::now() + timeout;
    let expected = id_file_bytes(world, &[0; UNIQUE_ID_BYTES]).len();
    loop {
        match std::fs::read(path) {
            Ok(bytes) => {
                if bytes.len() != expected || &bytes[..MAGIC.len()] != MAGIC {
                    return Err(fail(format!(
                        "rank {rank}: {} is not a c2f rendezvous file ({} bytes)",
                        path.display(),
                        bytes.len()
                    )));
                }
                let their_world =
                    u32::from_le_bytes(bytes[MAGIC.len()..][..4].try_into().unwrap()) as usize;
                if their_world != world {
                    return Err(fail(format!(
                        "rank {rank}: {} is for a world of {their_world}, this one has {world}",
                        path.display()
                    )));
                }
                return Ok(bytes[MAGIC.len() + 4..].try_into().unwrap());
            }
            Err(e) if e.kind() == ErrorKind::NotFound => {
                if Instant::now() >= deadline {
                    return Err(fail(format!(
                        "rank {rank}: rendezvous file {} did not appear within {} (is rank 0 \
                         running, and is the path on a filesystem every node shares?)",
                        path.display(),
                        seconds(timeout)
                    )));
                }
                sleep(POLL * 5);
            }
            Err(e) => {
                return Err(fail(format!(
                    "rank {rank}: cannot read {}: {e}",
                    path.display()
                )))
            }
        }
    }
}

/// Removes the id file; rank 0 calls it once the communicator is up (every rank has read it).
pub fn remove_rendezvous_file(rendezvous: &Rendezvous) -> Result<()> {
    match rendezvous {
        Rendezvous::File(path) => std::fs::remove_file(path)
            .map_err(|e| fail(format!("cannot remove {}: {e}", path.display()))),
        Rendezvous::Tcp(_) => Ok(()),
    }
}
