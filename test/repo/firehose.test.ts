/**
 * Event-stream frames: two DRISL values (header, body), each message type read
 * with its fields' types checked, and every malformed frame refused with
 * FirehoseFrameError saying what is wrong. Frames are built with @ipld/dag-cbor,
 * not with the decoder under test.
 */
import assert from 'node:assert/strict'
import { describe, it } from 'node:test'
import * as dagCbor from '@ipld/dag-cbor'
import { CID } from 'multiformats/cid'
import { sha256 } from 'multiformats/hashes/sha2'
import { parseFrame } from '../../src/repo/firehose.ts'

const cid = CID.createV1(0x71, await sha256.digest(new Uint8Array([1, 2, 3])))
const time = '2024-01-01T00:00:00.000Z'

function frame (header: unknown, body: unknown): Uint8Array {
  return new Uint8Array(Buffer.concat([dagCbor.encode(header), dagCbor.encode(body)]))
}

const commitBody = {
  seq: 7,
  rebase: false,
  tooBig: false,
  repo: 'did:plc:abc',
  commit: cid,
  rev: '3l3qo2vutsw2b',
  since: null,
  blocks: new Uint8Array([9]),
  ops: [{ action: 'create', path: 'app.bsky.feed.post/abc', cid }, { action: 'delete', path: 'app.bsky.feed.post/old', cid: null, prev: cid }],
  blobs: [],
  prevData: cid,
  time
}

describe('firehose frames', () => {
  it('reads a #commit with its ops and prevData', () => {
    const msg = parseFrame(frame({ op: 1, t: '#commit' }, commitBody))
    assert.equal(msg.type, 'commit')
    if (msg.type !== 'commit') return
    assert.equal(msg.seq, 7)
    assert.equal(msg.did, 'did:plc:abc')
    assert.ok(msg.commit.equals(cid))
    assert.ok(msg.prevData?.equals(cid))
    assert.deepEqual(msg.ops.map(op => [op.action, op.path, op.cid?.toString() ?? null, op.prev?.toString() ?? null]), [
      ['create', 'app.bsky.feed.post/abc', cid.toString(), null],
      ['delete', 'app.bsky.feed.post/old', null, cid.toString()]
    ])
    assert.deepEqual(msg.blocks, new Uint8Array([9]))
  })

  it('reads #sync, #identity, #account, #info and error frames', () => {
    assert.deepEqual(parseFrame(frame({ op: 1, t: '#sync' }, { seq: 1, did: 'did:plc:abc', rev: 'r', blocks: new Uint8Array([1]), time })),
      { type: 'sync', seq: 1, did: 'did:plc:abc', rev: 'r', blocks: new Uint8Array([1]), time })
    assert.deepEqual(parseFrame(frame({ op: 1, t: '#identity' }, { seq: 2, did: 'did:plc:abc', handle: 'a.test', time })),
      { type: 'identity', seq: 2, did: 'did:plc:abc', handle: 'a.test', time })
    assert.deepEqual(parseFrame(frame({ op: 1, t: '#account' }, { seq: 3, did: 'did:plc:abc', active: false, status: 'takendown', time })),
      { type: 'account', seq: 3, did: 'did:plc:abc', active: false, status: 'takendown', time })
    assert.deepEqual(parseFrame(frame({ op: 1, t: '#info' }, { name: 'OutdatedCursor' })), { type: 'info', name: 'OutdatedCursor', message: undefined })
    assert.deepEqual(parseFrame(frame({ op: -1 }, { error: 'FutureCursor', message: 'no' })), { type: 'error', error: 'FutureCursor', message: 'no' })
  })

  it('returns a message type it does not know as unknown, with its seq', () => {
    assert.deepEqual(parseFrame(frame({ op: 1, t: '#later' }, { seq: 9, anything: [1] })), { type: 'unknown', t: '#later', seq: 9 })
  })

  const malformed: Array<[string, Uint8Array]> = [
    ['garbage bytes', new Uint8Array([0xff, 0x00, 0x13])],
    ['a header only', dagCbor.encode({ op: 1, t: '#commit' })],
    ['bytes after the body', new Uint8Array([...frame({ op: 1, t: '#info' }, { name: 'x' }), 0])],
    ['a header that is not a map', frame([1], { name: 'x' })],
    ['an op that is neither 1 nor -1', frame({ op: 2, t: '#info' }, { name: 'x' })],
    ['no message type', frame({ op: 1 }, { name: 'x' })],
    ['a non-canonical header (keys out of order)', new Uint8Array([0xa2, 0x62, 0x6f, 0x70, 0x01, 0x61, 0x74, 0x65, 0x23, 0x69, 0x6e, 0x66, 0x6f, ...dagCbor.encode({ name: 'x' })])],
    ['a #commit whose commit is not a link', frame({ op: 1, t: '#commit' }, { ...commitBody, commit: 'bafy' })],
    ['a #commit with a negative seq', frame({ op: 1, t: '#commit' }, { ...commitBody, seq: -1 })],
    ['a #commit with an op of an unknown action', frame({ op: 1, t: '#commit' }, { ...commitBody, ops: [{ action: 'move', path: 'a/b', cid }] })],
    ['a #commit whose blocks are not bytes', frame({ op: 1, t: '#commit' }, { ...commitBody, blocks: 'car' })],
    ['an #account without active', frame({ op: 1, t: '#account' }, { seq: 3, did: 'did:plc:abc', time })],
    ['a float', frame({ op: 1, t: '#info' }, { name: 'x', n: 1.5 })]
  ]
  for (const [name, bytes] of malformed) {
    it(`refuses ${name}`, () => {
      assert.throws(() => parseFrame(bytes, { url: 'wss://host.example' }), (err: Error) => {
        assert.equal(err.name, 'FirehoseFrameError')
        assert.match(err.message, /malformed firehose frame: .+; url=wss:\/\/host\.example/)
        return true
      })
    })
  }
})
