/**
 * The blobs a record references: every `{ $type: 'blob', ref, mimeType, size }`
 * object anywhere in it whose `ref` is a CIDv1 raw (0x55) sha2-256 link, as the
 * data model defines a blob (data-model.ts checks the same shape), and every
 * legacy blob: `{ cid, mimeType }`, both strings and no `$type`, from records
 * written before the data model had links (atproto.com/specs/data-model, "blob
 * type"), whose `cid` parses to such a CID. A legacy blob declares no size.
 *
 * Most records reference no blob, and a sync sees every block of a repo, so a
 * block is first searched for the bytes a reference encodes to, and only blocks
 * that hold one are decoded: for a link, CBOR tag 42, a 37-byte string, the
 * identity multibase prefix, CIDv1, raw, sha2-256, 32 bytes; for a legacy blob, the
 * text key `cid` followed by a 59-character text string starting `bafkrei` (a raw
 * sha2-256 CIDv1 in base32, the form every legacy blob took). DRISL encodes lengths
 * minimally and a map's value right after its key, so neither search misses one.
 */
import { decodeCbor } from './cbor.ts'
import { CID, RAW, SHA2_256 } from './cid.ts'

/** One blob reference: the blob's CID and the size the record declares (untrusted). */
export interface BlobRef {
  cid: CID
  /** The record's `size` field, when it is a non-negative integer. */
  size?: number
}

/** What every raw sha2-256 CIDv1 link encodes to before its digest. */
const RAW_LINK = Uint8Array.from([0xd8, 0x2a, 0x58, 0x25, 0x00, 0x01, RAW, SHA2_256, 0x20])
/** A legacy blob's `cid` key and the start of its value: text(3) "cid", text(59) "bafkrei". */
const LEGACY_CID = Uint8Array.from([0x63, ...Buffer.from('cid'), 0x78, 59, ...Buffer.from('bafkrei')])

/** Whether `bytes` may reference a blob (holds a raw sha2-256 link, or a legacy blob's CID string); false means it cannot. */
export function mayReferenceBlobs (bytes: Uint8Array): boolean {
  const buf = Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength)
  return buf.indexOf(RAW_LINK) !== -1 || buf.indexOf(LEGACY_CID) !== -1
}

/** A raw sha2-256 CIDv1, the only kind a blob is named by. */
function isBlobCid (cid: CID): boolean {
  return cid.version === 1 && cid.code === RAW && cid.multihash.code === SHA2_256 && cid.multihash.size === 32
}

/** The CID of a legacy blob object (`{ cid, mimeType }`, strings, no `$type`), or null. */
function legacyBlobCid (obj: Record<string, unknown>): CID | null {
  if (obj.$type !== undefined || typeof obj.cid !== 'string' || typeof obj.mimeType !== 'string') return null
  try {
    const cid = CID.parse(obj.cid)
    return isBlobCid(cid) ? cid : null
  } catch {
    return null
  }
}

/**
 * The blobs a record block references (each once, in the order met). A block that
 * is not valid DRISL references none: records are verified elsewhere, and a block
 * this is asked about may be an MST node or a commit.
 */
export function blobRefsOf (bytes: Uint8Array): BlobRef[] {
  if (!mayReferenceBlobs(bytes)) return []
  let value: unknown
  try {
    value = decodeCbor(bytes, { canonical: false })
  } catch {
    return []
  }
  const found = new Map<string, BlobRef>()
  const stack: unknown[] = [value]
  while (stack.length > 0) {
    const item = stack.pop()
    if (item === null || typeof item !== 'object' || item instanceof Uint8Array || CID.asCID(item) !== null) continue
    if (Array.isArray(item)) {
      for (let i = item.length - 1; i >= 0; i--) stack.push(item[i])
      continue
    }
    const obj = item as Record<string, unknown>
    if (obj.$type === 'blob') {
      const ref = CID.asCID(obj.ref)
      if (ref !== null && isBlobCid(ref)) {
        const key = ref.toString()
        if (!found.has(key)) {
          const size = typeof obj.size === 'number' && Number.isSafeInteger(obj.size) && obj.size >= 0 ? obj.size : undefined
          found.set(key, size === undefined ? { cid: ref } : { cid: ref, size })
        }
        continue
      }
    }
    const legacy = legacyBlobCid(obj)
    if (legacy !== null) {
      const key = legacy.toString()
      if (!found.has(key)) found.set(key, { cid: legacy })
      continue
    }
    const values = Object.values(obj)
    for (let i = values.length - 1; i >= 0; i--) stack.push(values[i])
  }
  return [...found.values()]
}
