/**
 * Blob references in records (src/repo/blob-refs.ts): blob objects anywhere in a
 * record, each once, and legacy blobs (`{ cid, mimeType }` strings); raw links that
 * are not blobs, blobs with other links, legacy-looking objects that are not legacy
 * blobs, and blocks that are not DRISL are not references.
 */
import assert from 'node:assert/strict'
import { describe, it } from 'node:test'
import { blobRefsOf, mayReferenceBlobs } from '../../src/repo/blob-refs.ts'
import { encodeCbor } from '../../src/repo/cbor.ts'
import { DAG_CBOR, RAW, cidForBytes } from '../../src/repo/cid.ts'

const blobA = cidForBytes(new TextEncoder().encode('image a'), RAW)
const blobB = cidForBytes(new TextEncoder().encode('image b'), RAW)
const blob = (ref: unknown, size = 1234): Record<string, unknown> => ({ $type: 'blob', ref, mimeType: 'image/jpeg', size })

describe('blob references', () => {
  it('a post with images: every blob, in order, once, with its declared size', () => {
    const bytes = encodeCbor({
      $type: 'app.bsky.feed.post',
      text: 'two images, one twice',
      embed: { $type: 'app.bsky.embed.images', images: [{ alt: '', image: blob(blobA, 10) }, { alt: '', image: blob(blobB, 20) }, { alt: '', image: blob(blobA, 10) }] }
    })
    assert.equal(mayReferenceBlobs(bytes), true)
    assert.deepEqual(blobRefsOf(bytes).map(ref => [ref.cid.toString(), ref.size]), [[blobA.toString(), 10], [blobB.toString(), 20]])
  })

  it('a profile avatar and banner, nested in a record', () => {
    const bytes = encodeCbor({ $type: 'app.bsky.actor.profile', displayName: 'x', avatar: blob(blobA), banner: blob(blobB) })
    assert.deepEqual(blobRefsOf(bytes).map(ref => ref.cid.toString()).sort(), [blobA.toString(), blobB.toString()].sort())
  })

  it('a record with no raw link is not even decoded', () => {
    const bytes = encodeCbor({ $type: 'app.bsky.feed.post', text: 'hi', createdAt: '2024-01-01T00:00:00.000Z' })
    assert.equal(mayReferenceBlobs(bytes), false)
    assert.deepEqual(blobRefsOf(bytes), [])
  })

  it('a raw link outside a blob object is no reference', () => {
    assert.deepEqual(blobRefsOf(encodeCbor({ $type: 'x.y.z', link: blobA })), [])
  })

  it('a blob object whose ref is not raw sha2-256 is no reference', () => {
    const dagCbor = cidForBytes(encodeCbor({ a: 1 }), DAG_CBOR)
    assert.deepEqual(blobRefsOf(encodeCbor({ $type: 'x.y.z', file: blob(dagCbor), other: blobA })), [])
  })

  it('a legacy blob (cid as a string, no $type) is a reference with no declared size', () => {
    const bytes = encodeCbor({ $type: 'app.bsky.actor.profile', avatar: { cid: blobA.toString(), mimeType: 'image/png' } })
    assert.equal(mayReferenceBlobs(bytes), true)
    const refs = blobRefsOf(bytes)
    assert.equal(refs.length, 1)
    assert.equal(refs[0].cid.toString(), blobA.toString())
    assert.equal(refs[0].cid.code, RAW)
    assert.equal(refs[0].size, undefined)
  })

  it('legacy and current blobs in one record: each blob once', () => {
    const bytes = encodeCbor({
      $type: 'app.bsky.feed.post',
      embed: { images: [{ image: { cid: blobA.toString(), mimeType: 'image/png' } }, { image: blob(blobB, 7) }, { image: blob(blobA, 9) }] }
    })
    assert.deepEqual(blobRefsOf(bytes).map(ref => ref.cid.toString()).sort(), [blobA.toString(), blobB.toString()].sort())
  })

  it('a legacy-looking object is no reference: a $type, a CID that is not raw sha2-256, not a CID, no mimeType, a strong ref', () => {
    const dagCbor = cidForBytes(encodeCbor({ a: 1 }), DAG_CBOR)
    const notCid = 'bafkrei' + 'z'.repeat(52)
    assert.equal(notCid.length, 59)
    const cases: Array<Record<string, unknown>> = [
      { $type: 'x.y.z', cid: blobA.toString(), mimeType: 'image/png' },
      { cid: dagCbor.toString(), mimeType: 'image/png' },
      { cid: notCid, mimeType: 'image/png' },
      { cid: blobA.toString() },
      { cid: blobA.toString(), mimeType: 5 },
      { uri: 'at://did:plc:aaaaaaaaaaaaaaaaaaaaaaaa/app.bsky.feed.post/3k', cid: dagCbor.toString() }
    ]
    for (const value of cases) assert.deepEqual(blobRefsOf(encodeCbor({ $type: 'x.y.z', value })), [], JSON.stringify(value))
    // a record that only names a dag-cbor CID as a string is not even decoded
    assert.equal(mayReferenceBlobs(encodeCbor({ subject: { uri: 'at://x', cid: dagCbor.toString() } })), false)
  })

  it('bytes that are not DRISL reference nothing, even when they hold a raw link', () => {
    const link = encodeCbor(blobA)
    const junk = new Uint8Array([0xff, 0xff, ...link, 0xff])
    assert.equal(mayReferenceBlobs(junk), true)
    assert.deepEqual(blobRefsOf(junk), [])
  })
})
