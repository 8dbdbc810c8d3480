//! The replication and witness links' session: a handshake that proves the
//! shared secret both ways and agrees on fresh keys by an ephemeral X25519
//! exchange, then every frame sealed (ChaCha20-Poly1305, RFC 8439) under a
//! per-direction key and counter (architecture section 3; issue 14).
//!
//! ```text
//! follower (client)                         primary (server)
//!   ClientHello{nonce_c, name_c, e_c}  -------->
//!                                 <------------ ServerChallenge{nonce_s, name_s, e_s,
//!                                                 proof_s = H(k, "server"|nonce_c|nonce_s|name_s|e_c|e_s)}
//!   verify proof_s
//!   ClientProof{proof_c = H(k, "client"|nonce_s|nonce_c|name_c|e_c|e_s)} ---->
//!                                 <------------ AuthOk   (verify proof_c)
//! dh = X25519(e_c, e_s); session key = H(k, "session"|nonce_c|nonce_s|e_c|e_s|dh);
//! each direction seals frames with H(session key, direction) and a
//! counter from 0 as the nonce.
//! ```
//! The shape of TLS 1.3's `psk_dhe_ke` (RFC 8446, section 4.2.9) with the
//! pair's shared secret as the PSK: both sides prove the secret without
//! sending it, and the proofs cover the ephemeral keys, so a party without
//! the secret can neither pose as a node nor put itself in the middle; fresh
//! nonces stop replays of old handshakes; the counter stops replays and
//! reordering inside a session; and since the keys come from ephemeral
//! Diffie-Hellman, a secret stolen later does not decrypt what was
//! recorded (forward secrecy). Until `AuthOk` frames are in clear: they
//! carry nonces, names, public keys and proofs, nothing of the state.

use chacha20poly1305::aead::{AeadInPlace, KeyInit};
use chacha20poly1305::ChaCha20Poly1305;
use hmac::{Hmac, Mac};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

const LABEL_SERVER: &[u8] = b"esc-repl-v3 server";
const LABEL_CLIENT: &[u8] = b"esc-repl-v3 client";
const LABEL_SESSION: &[u8] = b"esc-repl-v3 session";
/// Bytes of the tag a sealed frame carries.
pub const TAG_LEN: usize = 16;

fn hmac(key: &[u8], parts: &[&[u8]]) -> [u8; 32] {
    let mut mac = <HmacSha256 as Mac>::new_from_slice(key).expect("HMAC accepts any key length");
    for p in parts {
        mac.update(&(p.len() as u32).to_be_bytes());
        mac.update(p);
    }
    mac.finalize().into_bytes().into()
}

fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// One side's ephemeral X25519 key (RFC 7748), made from 32 random bytes
/// the caller draws (this crate does no I/O).
pub struct Ephemeral(x25519_dalek::StaticSecret);

impl Ephemeral {
    pub fn from_random(bytes: [u8; 32]) -> Ephemeral {
        Ephemeral(x25519_dalek::StaticSecret::from(bytes))
    }

    /// The public key sent in the hello or the challenge.
    pub fn public(&self) -> [u8; 32] {
        x25519_dalek::PublicKey::from(&self.0).to_bytes()
    }

    /// The shared secret with the peer's public key; None for a key of
    /// small order (the result would be known to anyone: RFC 7748,
    /// section 6.1).
    pub fn agree(&self, peer: &[u8; 32]) -> Option<[u8; 32]> {
        let shared = self.0.diffie_hellman(&x25519_dalek::PublicKey::from(*peer));
        shared.was_contributory().then(|| shared.to_bytes())
    }
}

/// The handshake computations for one connection.
pub struct Handshake<'a> {
    pub secret: &'a [u8],
    pub client_nonce: [u8; 32],
    pub server_nonce: [u8; 32],
    pub client_ephemeral: [u8; 32],
    pub server_ephemeral: [u8; 32],
}

impl Handshake<'_> {
    /// The primary's proof, bound to both nonces, both keys and its name.
    pub fn server_proof(&self, server_name: &str) -> [u8; 32] {
        hmac(
            self.secret,
            &[
                LABEL_SERVER,
                &self.client_nonce,
                &self.server_nonce,
                server_name.as_bytes(),
                &self.client_ephemeral,
                &self.server_ephemeral,
            ],
        )
    }

    /// The follower's proof, bound to both nonces, both keys and its name.
    pub fn client_proof(&self, client_name: &str) -> [u8; 32] {
        hmac(
            self.secret,
            &[
                LABEL_CLIENT,
                &self.server_nonce,
                &self.client_nonce,
                client_name.as_bytes(),
                &self.client_ephemeral,
                &self.server_ephemeral,
            ],
        )
    }

    /// Constant-time comparison of a received proof.
    pub fn check(expected: &[u8; 32], received: &[u8; 32]) -> bool {
        ct_eq(expected, received)
    }

    /// Seals for (client->server, server->client) frames, from the
    /// Diffie-Hellman result `dh` ([`Ephemeral::agree`]).
    pub fn session(&self, dh: &[u8; 32]) -> (FrameSeal, FrameSeal) {
        let key = hmac(
            self.secret,
            &[
                LABEL_SESSION,
                &self.client_nonce,
                &self.server_nonce,
                &self.client_ephemeral,
                &self.server_ephemeral,
                dh,
            ],
        );
        (
            FrameSeal::new(hmac(&key, &[b"c2s"])),
            FrameSeal::new(hmac(&key, &[b"s2c"])),
        )
    }
}

/// The seal of one direction: its key and frame counter.
#[derive(Clone)]
pub struct FrameSeal {
    cipher: ChaCha20Poly1305,
    seq: u64,
}

impl FrameSeal {
    pub fn new(key: [u8; 32]) -> FrameSeal {
        FrameSeal {
            cipher: ChaCha20Poly1305::new(&key.into()),
            seq: 0,
        }
    }

    /// The nonce of frame `seq`: never reused under one key (a session
    /// would end long before 2^64 frames).
    fn nonce(seq: u64) -> chacha20poly1305::Nonce {
        let mut n = [0u8; 12];
        n[4..].copy_from_slice(&seq.to_be_bytes());
        n.into()
    }

    /// Encrypts the next outgoing frame's body in place, bound to its
    /// header (`aad`); returns the tag.
    pub fn seal(&mut self, aad: &[u8], body: &mut [u8]) -> [u8; TAG_LEN] {
        let tag = self
            .cipher
            .encrypt_in_place_detached(&Self::nonce(self.seq), aad, body)
            .expect("a frame body is far below ChaCha20-Poly1305's limit");
        self.seq += 1;
        tag.into()
    }

    /// Decrypts the next incoming frame's body in place; false (and the
    /// counter unchanged) if it was not sealed by the peer for this
    /// position.
    pub fn open(&mut self, aad: &[u8], body: &mut [u8], tag: &[u8]) -> bool {
        if tag.len() != TAG_LEN {
            return false;
        }
        let ok = self
            .cipher
            .decrypt_in_place_detached(&Self::nonce(self.seq), aad, body, tag.into())
            .is_ok();
        if ok {
            self.seq += 1;
        }
        ok
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hs(secret: &'static [u8]) -> Handshake<'static> {
        Handshake {
            secret,
            client_nonce: [1; 32],
            server_nonce: [2; 32],
            client_ephemeral: [3; 32],
            server_ephemeral: [4; 32],
        }
    }

    #[test]
    fn proofs_need_the_same_secret_and_keys() {
        let a = hs(b"secret-one-secret-one-secret-one");
        let b = hs(b"secret-two-secret-two-secret-two");
        assert!(Handshake::check(&a.server_proof("p"), &a.server_proof("p")));
        assert!(!Handshake::check(
            &a.server_proof("p"),
            &b.server_proof("p")
        ));
        assert!(!Handshake::check(
            &a.client_proof("s"),
            &a.client_proof("x")
        ));
        // Server and client proofs differ even for equal inputs (no reflection).
        assert_ne!(a.server_proof("n"), a.client_proof("n"));
        // A key put in by someone in the middle changes the proof.
        let m = Handshake {
            server_ephemeral: [5; 32],
            ..hs(b"secret-one-secret-one-secret-one")
        };
        assert_ne!(a.server_proof("p"), m.server_proof("p"));
        assert_ne!(a.client_proof("p"), m.client_proof("p"));
    }

    #[test]
    fn both_sides_agree_and_small_order_keys_are_refused() {
        let (c, s) = (
            Ephemeral::from_random([7; 32]),
            Ephemeral::from_random([9; 32]),
        );
        let k1 = c.agree(&s.public()).unwrap();
        assert_eq!(Some(k1), s.agree(&c.public()));
        assert!(c.agree(&[0; 32]).is_none(), "the identity point");
    }

    #[test]
    fn a_sealed_body_opens_once_in_order_and_only_unchanged() {
        let a = hs(b"secret-one-secret-one-secret-one");
        let (mut tx, _) = a.session(&[8; 32]);
        let (mut rx, _) = a.session(&[8; 32]);
        let mut body = b"deployment-secret-name".to_vec();
        let tag = tx.seal(b"hdr", &mut body);
        assert!(!body.windows(6).any(|w| w == b"secret"), "encrypted");
        let mut wrong_aad = body.clone();
        assert!(!rx.open(b"HDR", &mut wrong_aad, &tag));
        let mut flipped = body.clone();
        flipped[0] ^= 1;
        assert!(!rx.open(b"hdr", &mut flipped, &tag));
        let mut ok = body.clone();
        assert!(rx.open(b"hdr", &mut ok, &tag));
        assert_eq!(ok, b"deployment-secret-name");
        // A replay of the same frame is out of position.
        let mut again = body;
        assert!(!rx.open(b"hdr", &mut again, &tag));
        // Another DH result is another session.
        let (mut other, _) = a.session(&[9; 32]);
        let mut b2 = b"x".to_vec();
        let t2 = other.seal(b"h", &mut b2);
        let (mut rx2, _) = a.session(&[8; 32]);
        assert!(!rx2.open(b"h", &mut b2, &t2));
    }
}
