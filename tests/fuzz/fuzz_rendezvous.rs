//! The distributed launcher's rendezvous: a rank's hello as rank 0 reads it, rank 0's answer
//! (the NCCL id, or why it gave up) as a rank reads it, and the id file of `file:PATH`.

use std::net::SocketAddr;
use std::time::Duration;

use crate::harness::{fuzz, scratch, Outcome};
use c2f_dist::rendezvous::{exchange_id, read_answer, read_hello, Rendezvous};
use c2f_dist::DistError;

const WORLD: usize = 4;

/// A typed rendezvous error is a refusal; anything else is wrong.
fn refused(e: DistError, must_name: &str) -> Outcome {
    match e {
        DistError::Rendezvous(m) if m.contains(must_name) => Outcome::Refused,
        other => Outcome::Wrong(format!(
            "not a rendezvous error naming {must_name}: {other:?}"
        )),
    }
}

#[test]
fn rendezvous_messages() {
    let dir = scratch("rendezvous");
    let file = dir.join("c2f.id");
    let id: Vec<u8> = (0..128).map(|k| k as u8 ^ 0x5a).collect();
    let mut hello = b"C2FRV1".to_vec();
    hello.extend(2u32.to_le_bytes());
    hello.extend((WORLD as u32).to_le_bytes());
    let answer = [&[0u8][..], &id].concat();
    let message = b"ranks 2, 3 did not arrive within 300 s";
    let gave_up = [&[1u8][..], &(message.len() as u32).to_le_bytes(), message].concat();
    let mut id_file = b"C2FRV1".to_vec();
    id_file.extend((WORLD as u32).to_le_bytes());
    id_file.extend(&id);
    let corpus = vec![hello, answer, gave_up, id_file];
    let from: SocketAddr = "10.0.0.2:40000".parse().unwrap();
    let at = "10.0.0.1:29500";
    fuzz("rendezvous", 20_000, &corpus, |k, data| match k {
        0 => match read_hello(&mut &data[..], from, WORLD) {
            Ok(_) => Outcome::Accepted,
            Err(e) => refused(e, "rank"),
        },
        1 | 2 => match read_answer(&mut &data[..], 1, at, Duration::from_secs(1)) {
            Ok(_) => Outcome::Accepted,
            Err(e) => refused(e, "rank 1"),
        },
        _ => {
            std::fs::write(&file, data).unwrap();
            let got = exchange_id(
                &Rendezvous::File(file.clone()),
                1,
                WORLD,
                None,
                Duration::ZERO,
            );
            match got {
                Ok(_) => Outcome::Accepted,
                Err(e) => refused(e, file.to_str().unwrap()),
            }
        }
    });
}
