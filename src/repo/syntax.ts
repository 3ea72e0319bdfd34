/**
 * Identifier syntax from the atproto specs (atproto.com/specs/did, /handle,
 * /nsid, /record-key, /tid, /repository): pure string checks, no resolution.
 * The `isValid*` functions never throw; `ensureValid*` throw a named error.
 */
import { InvalidIdentifierError, InvalidRecordPathError } from '../errors.ts'

/** Longest DID atproto accepts (the DID spec allows 2 KiB for atproto use). */
export const MAX_DID_LENGTH = 2048
/** Longest handle (a DNS name). */
export const MAX_HANDLE_LENGTH = 253
/** Longest NSID: a 253-character domain authority plus a 63-character name. */
export const MAX_NSID_LENGTH = 253 + 1 + 63
/** Longest record key. */
export const MAX_RECORD_KEY_LENGTH = 512

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
