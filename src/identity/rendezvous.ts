/**
 * The rendezvous key of a DID: a CID derived from the DID string alone, which
 * every node mirroring that DID provides on the DHT, so that looking up the
 * providers of `rendezvousCid(did)` finds the peers that really hold the repo.
 *
 *   rendezvousCid(did) = CIDv1(raw 0x55, sha2-256(UTF-8("/atmirror/rendezvous/1/" + did)))
 *
 * It depends on nothing that changes (not the key, not the PDS, not the handle),
 * so mirrors and seekers agree on it without resolving anything. The prefix
 * namespaces it (no collision with the CID of some real content by accident) and
 * versions it (a new scheme gets a new prefix). See docs/PROTOCOL.md.
 */
import { InvalidIdentifierError } from '../errors.ts'
import { cidForBytes, RAW, type CID } from '../repo/cid.ts'
import { isValidDid } from '../repo/syntax.ts'

/** Prefix of the hashed string; the trailing `1` is the scheme version. */
export const RENDEZVOUS_PREFIX = '/atmirror/rendezvous/1/'

const encoder = new TextEncoder()

/** The bytes whose sha2-256 is the rendezvous key. Throws InvalidIdentifierError for a bad DID. */
export function rendezvousPreimage (did: string): Uint8Array {
  if (!isValidDid(did)) throw new InvalidIdentifierError(did, 'not a valid DID')
  return encoder.encode(RENDEZVOUS_PREFIX + did)
}

/** The CID every mirror of `did` announces on the DHT. */
export function rendezvousCid (did: string): CID {
  return cidForBytes(rendezvousPreimage(did), RAW)
}
