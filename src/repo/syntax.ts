/**
 * Identifier syntax from the atproto specs (atproto.com/specs/did, /handle,
 * /nsid, /record-key, /tid, /repository, and the lexicon `cid` string format):
 * pure string checks, no resolution.
 * The `isValid*` functions never throw; `ensureValid*` throw a named error.
 */
import { InvalidIdentifierError, InvalidRecordPathError, UnsupportedCidError } from '../errors.ts'

/** Longest DID atproto accepts (the DID spec allows 2 KiB for atproto use). */
export const MAX_DID_LENGTH = 2048
/** Longest handle (a DNS name). */
export const MAX_HANDLE_LENGTH = 253
/** Longest NSID: a 253-character domain authority plus a 63-character name. */
export const MAX_NSID_LENGTH = 253 + 1 + 63
/** Longest record key. */
export const MAX_RECORD_KEY_LENGTH = 512
/** Shortest and longest CID string accepted by {@link isValidCidString}. */
export const MIN_CID_STRING_LENGTH = 8
export const MAX_CID_STRING_LENGTH = 256

const DID_RE = /^did:[a-z]+:[a-zA-Z0-9._:%-]*[a-zA-Z0-9._-]$/
// Labels of 1-63 letters, digits and inner hyphens; the last label (TLD) starts
// with a letter, which also rules out IP addresses.
const HANDLE_RE = /^([a-zA-Z0-9]([a-zA-Z0-9-]{0,61}[a-zA-Z0-9])?\.)+[a-zA-Z]([a-zA-Z0-9-]{0,61}[a-zA-Z0-9])?$/
// Reversed domain authority (first label starts with a letter) and a name of
// letters and digits that starts with a letter; at least three segments.
const NSID_RE = /^[a-zA-Z]([a-zA-Z0-9-]{0,61}[a-zA-Z0-9])?(\.[a-zA-Z0-9]([a-zA-Z0-9-]{0,61}[a-zA-Z0-9])?)+\.[a-zA-Z][a-zA-Z0-9]{0,62}$/
const RECORD_KEY_RE = /^[a-zA-Z0-9_~.:-]{1,512}$/
// 13 characters of base32-sortable; the first one keeps the top bit clear.
const TID_RE = /^[234567abcdefghij][234567abcdefghijklmnopqrstuvwxyz]{12}$/
// A multibase string: a base prefix and digits of the common bases (base2 to
// base64, with `=` padding); no separators, spaces or URI schemes.
const CID_STRING_RE = /^[a-zA-Z0-9+=]+$/
// A CIDv0: a bare base58btc sha2-256 multihash, always "Qm" and 44 more characters.
const CID_V0_RE = /^Qm[1-9A-HJ-NP-Za-km-z]{44}$/

/** Whether `did` is a syntactically valid DID (any method). */
export function isValidDid (did: unknown): did is string {
  return typeof did === 'string' && did.length <= MAX_DID_LENGTH && DID_RE.test(did)
}

/** Whether `handle` is a syntactically valid handle (no normalization applied). */
export function isValidHandle (handle: unknown): handle is string {
  return typeof handle === 'string' && handle.length <= MAX_HANDLE_LENGTH && HANDLE_RE.test(handle)
}

/** Whether `nsid` is a syntactically valid NSID. */
export function isValidNsid (nsid: unknown): nsid is string {
  return typeof nsid === 'string' && nsid.length <= MAX_NSID_LENGTH && NSID_RE.test(nsid)
}

/** Whether `rkey` is a syntactically valid record key (`.` and `..` are not). */
export function isValidRecordKey (rkey: unknown): rkey is string {
  return typeof rkey === 'string' && RECORD_KEY_RE.test(rkey) && rkey !== '.' && rkey !== '..'
}

/** Whether `tid` is a syntactically valid TID (as used for `rev`). */
export function isValidTid (tid: unknown): tid is string {
  return typeof tid === 'string' && TID_RE.test(tid)
}

/**
 * Whether `cid` has the syntax of a CID string, as the Lexicon `cid` string
 * format wants it (atproto.com/specs/lexicon#string-formats, which points to
 * the data model's CID formats): a multibase-encoded CIDv1. Following the
 * Lexicon rule that string formats accept the most expansive syntax, any
 * multibase of letters, digits, `+` and `=` passes, not only the blessed
 * base32; CIDv0 (`Qm…`, which is not CIDv1) does not. Syntax only: whether it
 * decodes, and to the blessed codecs and hash, is `parseCid`'s job (./cid.ts).
 */
export function isValidCidString (cid: unknown): cid is string {
  return typeof cid === 'string' && cid.length >= MIN_CID_STRING_LENGTH && cid.length <= MAX_CID_STRING_LENGTH &&
    CID_STRING_RE.test(cid) && !CID_V0_RE.test(cid)
}

/** Throws {@link UnsupportedCidError} unless `cid` has CID string syntax ({@link isValidCidString}). */
export function ensureValidCid (cid: string): void {
  if (!isValidCidString(cid)) {
    const text = String(cid)
    throw new UnsupportedCidError(JSON.stringify(text.length > 300 ? `${text.slice(0, 300)}…` : text), CID_V0_RE.test(text) ? 'CIDv0 strings are not used in atproto' : 'not a CID string')
  }
}

/** Whether `rpath` is a record path `collection/rkey` (a valid NSID and record key). */
export function isValidRecordPath (rpath: unknown): rpath is string {
  if (typeof rpath !== 'string') return false
  const slash = rpath.indexOf('/')
  if (slash < 0) return false
  return isValidNsid(rpath.slice(0, slash)) && isValidRecordKey(rpath.slice(slash + 1))
}

/** Throws {@link InvalidIdentifierError} unless `did` is a valid DID. */
export function ensureValidDid (did: string): void {
  if (!isValidDid(did)) throw new InvalidIdentifierError(String(did), 'not a valid DID')
}

/** Throws {@link InvalidIdentifierError} unless `handle` is a valid handle. */
export function ensureValidHandle (handle: string): void {
  if (!isValidHandle(handle)) throw new InvalidIdentifierError(String(handle), 'not a valid handle')
}

/**
 * Splits a record path into its collection and record key, throwing
 * {@link InvalidRecordPathError} that says which part is wrong.
 */
export function parseRecordPath (rpath: string): { collection: string, rkey: string } {
  if (typeof rpath !== 'string') throw new InvalidRecordPathError(String(rpath), 'not a string')
  const slash = rpath.indexOf('/')
  if (slash < 0) throw new InvalidRecordPathError(rpath, 'no "/" between collection and rkey')
  const collection = rpath.slice(0, slash)
  const rkey = rpath.slice(slash + 1)
  if (!isValidNsid(collection)) throw new InvalidRecordPathError(rpath, 'collection is not a valid NSID')
  if (!isValidRecordKey(rkey)) throw new InvalidRecordPathError(rpath, 'rkey is not a valid record key')
  return { collection, rkey }
}

/** Throws {@link InvalidRecordPathError} unless `rpath` is `collection/rkey`. */
export function ensureValidRecordPath (rpath: string): void {
  if (!isValidRecordPath(rpath)) parseRecordPath(rpath)
}
