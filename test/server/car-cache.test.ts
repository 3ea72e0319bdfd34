/**
 * The getRepo answer cache: kept only when complete, one gathering per commit, the
 * least recently used dropped past the byte bound, nothing over a quarter of it.
 */
import assert from 'node:assert/strict'
import { describe, it } from 'node:test'
import { RepoCarCache } from '../../src/server/sync-api.ts'

async function * chunks (n: number, size: number): AsyncGenerator<Buffer> {
  for (let i = 0; i < n; i++) yield Buffer.alloc(size, i)
}

async function drain (source: AsyncIterable<Buffer>, stopAfter = Infinity): Promise<number> {
  let n = 0
  for await (const _ of source) if (++n >= stopAfter) break
  return n
}

describe('RepoCarCache', () => {
  it('keeps a complete answer and gives the same bytes back', async () => {
    const cache = new RepoCarCache(1000)
    await drain(cache.fill('a', chunks(3, 10)))
    assert.deepEqual(Buffer.concat(cache.get('a') ?? []), Buffer.concat([Buffer.alloc(10, 0), Buffer.alloc(10, 1), Buffer.alloc(10, 2)]))
    assert.equal(cache.bytes, 30)
  })

  it('does not keep an answer the client stopped reading', async () => {
    const cache = new RepoCarCache(1000)
    assert.equal(await drain(cache.fill('a', chunks(5, 10)), 2), 2)
    assert.equal(cache.get('a'), undefined)
    assert.equal(cache.bytes, 0)
  })

  it('gathers one answer per commit at a time', async () => {
    const cache = new RepoCarCache(1000)
    const first = cache.fill('a', chunks(3, 10))
    await first.next() // under way
    const second = cache.fill('a', chunks(3, 10))
    await drain(second)
    assert.equal(cache.get('a'), undefined, 'the second did not gather')
    await drain(first)
    assert.equal(cache.bytes, 30)
  })

  it('never keeps an answer over a quarter of the bound, and drops the least recently used', async () => {
    const cache = new RepoCarCache(100)
    await drain(cache.fill('big', chunks(3, 10)))
    assert.equal(cache.get('big'), undefined)
    for (const key of ['a', 'b', 'c', 'd']) await drain(cache.fill(key, chunks(1, 25)))
    assert.ok(cache.get('a') !== undefined) // a is now the most recently used
    await drain(cache.fill('e', chunks(1, 25)))
    assert.equal(cache.get('b'), undefined)
    assert.ok(cache.get('a') !== undefined)
    assert.ok(cache.bytes <= 100)
  })
})
