/**
 * did:plc operation logs, verified without trusting whoever handed them over
 * (the did:plc spec, v0.1: "Audit log" and "Key rotation & account recovery").
 *
 * A log is the directory's audit log (`/{did}/log/audit`): every operation ever
 * accepted for the DID, in order, each with its CID, its `createdAt` and whether a
 * later recovery nullified it. {@link verifyPlcLog} replays it the way a directory
 * accepts operations:
 *
 * - the genesis operation (a `plc_operation`, or the legacy `create` form) has
 *   `prev: null`, is signed by one of its own rotation keys, and the SHA-256 of its
 *   signed DAG-CBOR, in base32, starts with the DID's 24 characters;
 * - every later operation names an operation of the current (not nullified) chain
 *   as `prev` and is signed by one of that operation's rotation keys: a key the
 *   chain had made valid at that point, and not one it had already removed;
 * - an operation whose `prev` is not the chain's tip is a recovery: it nullifies
 *   every operation after `prev`, and is valid only when signed by a rotation key
 *   of `prev` with higher priority (a lower index) than the key that signed the
 *   first operation it nullifies, and when it comes at most 72 hours after that
 *   operation;
 * - a tombstone ends the chain (nothing may build on it; a recovery still may);
 * - `createdAt` never goes back, and the `nullified` flags the log carries must be
 *   exactly the ones the replay computes.
 *
 * Signatures are ECDSA over the DAG-CBOR of the operation without `sig`, 64-byte
 * compact, low-S, in unpadded base64url (src/repo/keys.ts checks them). Pure: bytes
 * and objects in, a verified log or a {@link PlcLogInvalidError} out.
 *
 * The timestamps are the directory's and are not signed: a log from a peer can only
 * lie about them within the rules above, and {@link comparePlcLogs} holds a log to
 * the one already stored (same operations, same times), so a peer can neither drop
 * stored operations nor move their times.
 */
import { base32 } from 'multiformats/bases/base32'
import { base58btc } from 'multiformats/bases/base58'
import { base64url } from 'multiformats/bases/base64'
import { PlcLogConflictError, PlcLogInvalidError } from '../errors.ts'
import { encodeCbor } from '../repo/cbor.ts'
import { cidForBytes } from '../repo/cid.ts'
import { parseDidKey, publicKeyUncompressed, verifySignature, type PublicKey } from '../repo/keys.ts'
import type { DidDocument } from './did-document.ts'

/** How long a higher-priority rotation key may rewrite history (the spec's recovery window). */
export const PLC_RECOVERY_WINDOW_MS = 72 * 60 * 60 * 1000

/** Most entries a log may have (a real one has a handful). */
export const PLC_LOG_MAX_ENTRIES = 1000

/** A service entry of a `plc_operation`. */
export interface PlcService {
  type: string
  endpoint: string
}

/** The state a `plc_operation` sets (the directory's `/{did}/data`). */
export interface PlcDocumentData {
  did: string
  rotationKeys: string[]
  verificationMethods: Record<string, string>
  alsoKnownAs: string[]
  services: Record<string, PlcService>
}

/** A regular operation. */
export interface PlcOperation {
  type: 'plc_operation'
  rotationKeys: string[]
  verificationMethods: Record<string, string>
  alsoKnownAs: string[]
  services: Record<string, PlcService>
  prev: string | null
  sig: string
}

/** Deactivates the DID. */
export interface PlcTombstone {
  type: 'plc_tombstone'
  prev: string
  sig: string
}

/** The deprecated genesis form. */
export interface PlcLegacyCreate {
  type: 'create'
  signingKey: string
  recoveryKey: string
  handle: string
  service: string
  prev: null
  sig: string
}

export type PlcAnyOperation = PlcOperation | PlcTombstone | PlcLegacyCreate

/** One entry of an audit log, as the directory serves it. */
export interface PlcLogEntry {
  did: string
  operation: PlcAnyOperation
  cid: string
  nullified: boolean
  createdAt: string
}

/** A log that passed {@link verifyPlcLog}. */
export interface VerifiedPlcLog {
  did: string
  /** Every entry, nullified ones included, in order. */
  entries: PlcLogEntry[]
  /** The CID of the last operation of the current chain. */
  head: string
  /** The state the current chain ends in; `null` when it ends in a tombstone. */
  data: PlcDocumentData | null
}

interface ChainLink {
  index: number
  entry: PlcLogEntry
  /** The operation as a regular one; undefined for a tombstone. */
  data: PlcDocumentData | undefined
  time: number
  /** The index of the key that signed it among its `prev`'s rotation keys (genesis: its own). */
  signer: number
}

/**
 * Verifies an audit log of `did` (see the file header). Throws
 * {@link PlcLogInvalidError} naming the DID, the entry index and CID, and what failed.
 */
export function verifyPlcLog (did: string, log: unknown, options: { maxEntries?: number } = {}): VerifiedPlcLog {
  const fail = (reason: string, index?: number, cid?: string): never => { throw new PlcLogInvalidError(did, reason, { index, cid }) }
  if (!Array.isArray(log)) fail('not an array of entries')
  const raw = log as unknown[]
  if (raw.length === 0) fail('empty log')
  if (raw.length > (options.maxEntries ?? PLC_LOG_MAX_ENTRIES)) fail(`${raw.length} entries exceed the ${options.maxEntries ?? PLC_LOG_MAX_ENTRIES}-entry cap`)
  const entries = raw.map((value, index) => parseEntry(did, value, index))
  const chain: ChainLink[] = []
  const nullified = new Set<number>()
  // the same few rotation keys sign every operation: parse each once
  const parsed = new Map<string, PublicKey | null>()
  // and one key usually signs them all: the last signer is tried first
  let lastSigner: string | undefined
  const signerOf = (keys: string[], bytes: Uint8Array, sig: Uint8Array): number => {
    const index = findSigner(keys, bytes, sig, parsed, lastSigner)
    if (index >= 0) lastSigner = keys[index]
    return index
  }
  let lastTime = -Infinity
  for (const [index, entry] of entries.entries()) {
    const { operation: op, cid } = entry
    const computedCid = cidForBytes(encodeCbor(op))
    const computed = computedCid.toString()
    if (computed !== entry.cid) fail(`cid does not match the operation (computed ${computed})`, index, cid)
    const time = Date.parse(entry.createdAt)
    if (time < lastTime) fail('createdAt goes back in time', index, cid)
    const unsigned = unsignedBytes(op)
    const sig = decodeSig(op.sig)
    if (sig === undefined) fail('sig is not unpadded base64url of 64 bytes', index, cid)
    if (index === 0) {
      if (op.prev !== null) fail('the genesis operation has a prev', index, cid)
      if (op.type === 'plc_tombstone') fail('the genesis operation is a tombstone', index, cid)
      const data = toData(did, op as PlcOperation | PlcLegacyCreate)
      const signer = signerOf(data.rotationKeys, unsigned, sig as Uint8Array)
      if (signer < 0) fail('genesis signature is not by any of its rotation keys', index, cid)
      // the DID is the SHA-256 of the signed genesis operation: the digest of its CID
      const hash = base32.baseEncode(computedCid.multihash.digest)
      if (`did:plc:${hash.slice(0, 24)}` !== did) fail(`the genesis operation hashes to did:plc:${hash.slice(0, 24)}, not to the DID`, index, cid)
      chain.push({ index, entry, data, time, signer })
      lastTime = time
      continue
    }
    if (op.type === 'create') fail('a legacy create operation after genesis', index, cid)
    if (op.prev === null) fail('a second genesis operation (prev is null)', index, cid)
    const at = chain.findIndex(link => link.entry.cid === op.prev)
    if (at < 0) fail(`prev ${String(op.prev)} is not an operation of the current chain`, index, cid)
    const prev = chain[at] as ChainLink
    if (prev.data === undefined) fail('builds on a tombstone', index, cid)
    const keys = (prev.data as PlcDocumentData).rotationKeys
    const signer = signerOf(keys, unsigned, sig as Uint8Array)
    if (signer < 0) fail(`signature is not by any rotation key valid at this point (the ${keys.length} of operation ${prev.entry.cid})`, index, cid)
    const disputed = chain[at + 1]
    if (disputed !== undefined) {
      // a fork: a recovery that nullifies everything after prev
      if (time <= lastTime) fail('a recovery must come after the operations it nullifies', index, cid)
      if (signer >= disputed.signer) {
        fail(`recovery signed by rotation key ${signer} of operation ${prev.entry.cid}, which does not outrank key ${disputed.signer} that signed the nullified operation ${disputed.entry.cid}`, index, cid)
      }
      if (time - disputed.time > PLC_RECOVERY_WINDOW_MS) {
        fail(`recovery ${Math.round((time - disputed.time) / 3_600_000)} h after the operation it nullifies (${disputed.entry.cid}), outside the 72 h window`, index, cid)
      }
      for (const link of chain.splice(at + 1)) nullified.add(link.index)
    }
    chain.push({ index, entry, data: op.type === 'plc_tombstone' ? undefined : toData(did, op), time, signer })
    lastTime = Math.max(lastTime, time)
  }
  for (const [index, entry] of entries.entries()) {
    if (entry.nullified !== nullified.has(index)) {
      fail(entry.nullified ? 'marked nullified, but no valid recovery nullifies it' : 'nullified by a later recovery, but not marked so', index, entry.cid)
    }
  }
  const tip = chain.at(-1) as ChainLink
  return { did, entries, head: tip.entry.cid, data: tip.data ?? null }
}

/**
 * How `offered` stands to `stored` (both verified, same DID): `'same'`, or
 * `'extends'` when it holds every stored entry, in order and with the same time,
 * and more. A shorter log (a truncated one offered as current) or one that leaves
 * out or rewrites stored entries throws {@link PlcLogConflictError}; a log that
 * nullifies stored operations passes only through a recovery that
 * {@link verifyPlcLog} accepted.
 */
export function comparePlcLogs (stored: VerifiedPlcLog, offered: VerifiedPlcLog): 'same' | 'extends' {
  const did = stored.did
  if (offered.did !== did) throw new PlcLogConflictError(did, `the offered log is of ${offered.did}`)
  for (const [index, entry] of stored.entries.entries()) {
    const other = offered.entries[index]
    if (other === undefined) {
      throw new PlcLogConflictError(did, `the offered log has ${offered.entries.length} entries, the stored one ${stored.entries.length}: truncated`, { index, cid: entry.cid })
    }
    if (other.cid !== entry.cid) throw new PlcLogConflictError(did, `the offered log forks from the stored one (it has ${other.cid} here)`, { index, cid: entry.cid })
    if (Date.parse(other.createdAt) !== Date.parse(entry.createdAt)) throw new PlcLogConflictError(did, `the offered log dates the entry ${other.createdAt}, the stored one ${entry.createdAt}`, { index, cid: entry.cid })
  }
  return offered.entries.length === stored.entries.length ? 'same' : 'extends'
}

/** Options of {@link plcDocument}. */
export interface PlcDocumentOptions {
  /**
   * `'multikey'`: today's directory (Multikey keys, ids `<did>#<name>`);
   * `'legacy'`: early directories (`EcdsaSecp256{k,r}1VerificationKey2019` with
   * uncompressed keys, ids `#<name>`).
   * @default 'multikey'
   */
  format?: 'multikey' | 'legacy'
}

const KEY_CONTEXTS = { k256: 'https://w3id.org/security/suites/secp256k1-2019/v1', p256: 'https://w3id.org/security/suites/ecdsa-2019/v1' }
const LEGACY_TYPES = { k256: 'EcdsaSecp256k1VerificationKey2019', p256: 'EcdsaSecp256r1VerificationKey2019' }

/** The DID document a PLC directory serves for `data` (`/{did}`). */
export function plcDocument (data: PlcDocumentData, options: PlcDocumentOptions = {}): DidDocument {
  const legacy = options.format === 'legacy'
  const context = legacy ? ['https://www.w3.org/ns/did/v1'] : ['https://www.w3.org/ns/did/v1', 'https://w3id.org/security/multikey/v1']
  const verificationMethod = Object.entries(data.verificationMethods).map(([name, didKey]) => {
    let key: PublicKey | undefined
    try {
      key = parseDidKey(didKey)
    } catch {}
    if (key !== undefined && !context.includes(KEY_CONTEXTS[key.type])) context.push(KEY_CONTEXTS[key.type])
    const multibase = didKey.replace(/^did:key:/, '')
    if (legacy && key !== undefined) {
      return { id: `#${name}`, type: LEGACY_TYPES[key.type], controller: data.did, publicKeyMultibase: base58btc.encode(publicKeyUncompressed(key)) }
    }
    return { id: legacy ? `#${name}` : `${data.did}#${name}`, type: 'Multikey', controller: data.did, publicKeyMultibase: multibase }
  })
  return {
    '@context': context,
    id: data.did,
    alsoKnownAs: data.alsoKnownAs,
    verificationMethod,
    service: Object.entries(data.services).map(([name, service]) => ({ id: `#${name}`, type: service.type, serviceEndpoint: service.endpoint }))
  }
}


// ---------------------------------------------------------------------------

function parseEntry (did: string, value: unknown, index: number): PlcLogEntry {
  const fail = (reason: string, cid?: string): never => { throw new PlcLogInvalidError(did, reason, { index, cid }) }
  if (!isMap(value)) fail('entry is not an object')
  const entry = value as Record<string, unknown>
  const cid = typeof entry.cid === 'string' ? entry.cid : undefined
  if (cid === undefined) fail('entry has no cid')
  if (entry.did !== did) fail(`entry is of ${JSON.stringify(entry.did)}`, cid)
  if (typeof entry.nullified !== 'boolean') fail('nullified is not a boolean', cid)
  if (typeof entry.createdAt !== 'string' || Number.isNaN(Date.parse(entry.createdAt))) fail('createdAt is not a timestamp', cid)
  const reason = operationProblem(entry.operation)
  if (reason !== undefined) fail(`malformed operation: ${reason}`, cid)
  return { did, operation: entry.operation as PlcAnyOperation, cid: cid as string, nullified: entry.nullified as boolean, createdAt: entry.createdAt as string }
}

/** Why `op` is not a well-formed operation, or undefined. Unknown fields are refused: the CID and signature cover every field. */
function operationProblem (op: unknown): string | undefined {
  if (!isMap(op)) return 'not an object'
  const fields = Object.keys(op)
  const allow = (names: string[]): string | undefined => {
    const extra = fields.filter(name => !names.includes(name))
    const missing = names.filter(name => !(name in op))
    if (extra.length > 0) return `unknown field ${extra[0] as string}`
    if (missing.length > 0) return `missing field ${missing[0] as string}`
    return undefined
  }
  if (typeof op.sig !== 'string') return 'sig is not a string'
  switch (op.type) {
    case 'plc_operation': {
      const problem = allow(['type', 'rotationKeys', 'verificationMethods', 'alsoKnownAs', 'services', 'prev', 'sig'])
      if (problem !== undefined) return problem
      if (op.prev !== null && typeof op.prev !== 'string') return 'prev is not a string or null'
      if (!isStringArray(op.rotationKeys) || op.rotationKeys.length < 1 || op.rotationKeys.length > 5) return 'rotationKeys is not 1 to 5 strings'
      if (new Set(op.rotationKeys).size !== op.rotationKeys.length) return 'rotationKeys has duplicates'
      if (!isStringArray(op.alsoKnownAs)) return 'alsoKnownAs is not an array of strings'
      if (!isMap(op.verificationMethods) || !Object.values(op.verificationMethods).every(v => typeof v === 'string')) return 'verificationMethods is not a map of strings'
      if (!isMap(op.services) || !Object.values(op.services).every(s => isMap(s) && Object.keys(s).length === 2 && typeof s.type === 'string' && typeof s.endpoint === 'string')) return 'services is not a map of { type, endpoint }'
      return undefined
    }
    case 'plc_tombstone': {
      const problem = allow(['type', 'prev', 'sig'])
      if (problem !== undefined) return problem
      return typeof op.prev === 'string' ? undefined : 'a tombstone needs a prev'
    }
    case 'create': {
      const problem = allow(['type', 'signingKey', 'recoveryKey', 'handle', 'service', 'prev', 'sig'])
      if (problem !== undefined) return problem
      if (op.prev !== null) return 'a legacy create has a prev'
      for (const name of ['signingKey', 'recoveryKey', 'handle', 'service']) if (typeof op[name] !== 'string') return `${name} is not a string`
      return undefined
    }
    default:
      return `unknown type ${JSON.stringify(op.type)}`
  }
}

/** A regular or legacy operation as the state it sets (the legacy form normalised as the spec says). */
function toData (did: string, op: PlcOperation | PlcLegacyCreate): PlcDocumentData {
  if (op.type === 'plc_operation') {
    return { did, rotationKeys: op.rotationKeys, verificationMethods: op.verificationMethods, alsoKnownAs: op.alsoKnownAs, services: op.services }
  }
  const handle = op.handle.replace(/^(https?:\/\/|at:\/\/)/, '')
  const endpoint = /^https?:\/\//.test(op.service) ? op.service : `https://${op.service}`
  return {
    did,
    rotationKeys: [op.recoveryKey, op.signingKey],
    verificationMethods: { atproto: op.signingKey },
    alsoKnownAs: [`at://${handle}`],
    services: { atproto_pds: { type: 'AtprotoPersonalDataServer', endpoint } }
  }
}

function unsignedBytes (op: PlcAnyOperation): Uint8Array {
  const { sig: _sig, ...unsigned } = op
  return encodeCbor(unsigned)
}

/** The index of the first rotation key that signed `bytes`, or -1. Keys that do not parse sign nothing. */
function findSigner (keys: string[], bytes: Uint8Array, sig: Uint8Array, parsed: Map<string, PublicKey | null>, first?: string): number {
  const verifies = (didKey: string): boolean => {
    let key = parsed.get(didKey)
    if (key === undefined) {
      try {
        key = parseDidKey(didKey)
      } catch {
        key = null
      }
      parsed.set(didKey, key)
    }
    return key !== null && verifySignature(key, bytes, sig)
  }
  // keys are distinct (checked), so whichever verifies is the one index
  const hinted = first === undefined ? -1 : keys.indexOf(first)
  if (hinted >= 0 && verifies(first as string)) return hinted
  for (const [index, didKey] of keys.entries()) {
    if (index !== hinted && verifies(didKey)) return index
  }
  return -1
}

/** Unpadded base64url of 64 bytes, canonical (re-encoding gives the same text, so the trailing bits are zero). */
function decodeSig (text: string): Uint8Array | undefined {
  try {
    const bytes = base64url.baseDecode(text)
    return bytes.length === 64 && base64url.baseEncode(bytes) === text ? bytes : undefined
  } catch {
    return undefined
  }
}

function isMap (value: unknown): value is Record<string, unknown> {
  return value !== null && typeof value === 'object' && !Array.isArray(value) && Object.getPrototypeOf(value) === Object.prototype
}

function isStringArray (value: unknown): value is string[] {
  return Array.isArray(value) && value.every(item => typeof item === 'string')
}
