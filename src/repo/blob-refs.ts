/**
 * The blobs a record references: every `{ $type: 'blob', ref, mimeType, size }`
 * object anywhere in it whose `ref` is a CIDv1 raw (0x55) sha2-256 link, as the
 * data model defines a blob (data-model.ts checks the same shape).
 *
 * Most records reference no blob, and a sync sees every block of a repo, so a
 * block is first searched for the bytes such a link encodes to (CBOR tag 42, a
 * 37-byte string, the identity multibase prefix, CIDv1, raw, sha2-256, 32 bytes):
 * only blocks that hold one are decoded. Legacy blobs (`{ cid: string, mimeType }`,
 * from before the data model had links) are not followed.
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

/** Whether `bytes` may reference a blob (holds a raw sha2-256 link); false means it cannot. */
export function mayReferenceBlobs (bytes: Uint8Array): boolean {
  return Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength).indexOf(RAW_LINK) !== -1
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
      if (ref !== null && ref.version === 1 && ref.code === RAW && ref.multihash.code === SHA2_256 && ref.multihash.size === 32) {
        const key = ref.toString()
        if (!found.has(key)) {
          const size = typeof obj.size === 'number' && Number.isSafeInteger(obj.size) && obj.size >= 0 ? obj.size : undefined
          found.set(key, size === undefined ? { cid: ref } : { cid: ref, size })
        }
        continue
      }
    }
    const values = Object.values(obj)
    for (let i = values.length - 1; i >= 0; i--) stack.push(values[i])
  }
  return [...found.values()]
}
