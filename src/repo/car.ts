/**
 * CAR v1 (ipld.io/specs/transport/car/carv1) as atproto uses it: a repo export
 * or a batch of blocks. Reading streams: blocks come out as they are parsed,
 * each checked against its CID, in whatever order the CAR has them.
 *
 * Parsing is @ipld/car's decoder (`readHeader`, `readBlockHead`) over a byte
 * reader of ours. The reader adds what the library does not check, so that
 * hostile input fails fast with a {@link CarParseError} carrying the byte offset:
 * varints must be terminated and minimal; header and section lengths are bounded
 * before anything is buffered (the library would buffer the whole stream for an
 * absurd length); a section's CID must fit in the section (the library computes
 * a negative block length and seeks backwards); CIDs must be canonically encoded;
 * the header must be version 1 with at least one root.
 */
import { readBlockHead, readHeader } from '@ipld/car/decoder'
import { CarWriter } from '@ipld/car/writer'
import type { BytesReader } from '@ipld/car/decoder'
import { varint } from 'multiformats'
import { CarParseError } from '../errors.ts'
import type { Block } from './block-store.ts'
import { assertSupportedCid, CID, verifyBlock } from './cid.ts'

export type { Block }

/** Default cap on one block's size: well above atproto's record and MST node sizes. */
export const DEFAULT_MAX_BLOCK_BYTES = 2 * 1024 * 1024
/** Cap on the header (a handful of roots needs well under 1 KiB). */
const MAX_HEADER_BYTES = 64 * 1024
/** Room for any CID in a section on top of the block: version, codec, hash code and length varints, digest. */
const MAX_CID_BYTES = 128
/** Section lengths above 2^56 need 9+ varint bytes; no sane CAR gets near that. */
const MAX_VARINT_BYTES = 8
/** Chunk size `writeCar` aims for. */
const WRITE_CHUNK_BYTES = 64 * 1024

/** Options for {@link readCar}. */
export interface ReadCarOptions {
  /** Stops reading (the pending read rejects with the signal's reason). */
  signal?: AbortSignal
  /** Largest block accepted; a bigger section is rejected before it is buffered. @default 2 MiB */
  maxBlockBytes?: number
  /**
   * Accept a header with no roots, as `com.atproto.sync.getBlocks` writes.
   * A repo CAR always has its commit as first root. @default false
   */
  allowNoRoots?: boolean
}

/** A CAR being read: its roots (first = commit for a repo) and its blocks as they stream in. */
export interface CarReader {
  roots: CID[]
  /**
   * Every block in CAR order, each verified against its CID as read
   * ({@link CidMismatchError}, {@link UnsupportedCidError}); duplicates are
   * yielded again. Parse errors throw {@link CarParseError}. The byte views
   * share memory with the input, so input chunks must not be reused.
   * Iterate to the end (or call `return()`) to release the source.
   */
  blocks: AsyncGenerator<Block, void, undefined>
}

/** Options for {@link writeCar}. */
export interface WriteCarOptions {
  /** Stops writing between blocks. */
  signal?: AbortSignal
}

/**
 * Starts reading a CAR v1 from bytes or a stream of chunks: resolves once the
 * header is read, with the roots and a generator of verified blocks.
 * Throws {@link CarParseError} (with `offset`) for a malformed header.
 */
export async function readCar (source: Uint8Array | AsyncIterable<Uint8Array>, options: ReadCarOptions = {}): Promise<CarReader> {
  options.signal?.throwIfAborted()
  const maxBlockBytes = options.maxBlockBytes ?? DEFAULT_MAX_BLOCK_BYTES
  const reader = new CarBytes(source, options.signal)
  let roots: CID[]
  try {
    roots = await readRoots(reader, options.allowNoRoots === true)
  } catch (err) {
    await reader.close()
    throw err
  }
  return { roots, blocks: readBlocks(reader, maxBlockBytes, options.signal) }
}

/**
 * Writes a CAR v1 with @ipld/car's `CarWriter`: the header with `roots` (for a
 * repo, the commit first), then every block in the order given. The library's
 * small writes (length, CID, bytes) are gathered into chunks of about 64 KiB;
 * a block that big on its own goes out as it is, uncopied. Blocks are written
 * as they are; checking them is the caller's job.
 *
 * Blocks are pulled from `blocks` only as fast as the output is consumed. When
 * the consumer stops early (or `signal` aborts), the source is released
 * (`return()`), and this generator finishes only once it has been.
 */
export async function * writeCar (roots: CID[], blocks: AsyncIterable<Block> | Iterable<Block>, options: WriteCarOptions = {}): AsyncGenerator<Uint8Array, void, undefined> {
  for (const root of roots) {
    if (CID.asCID(root) === null) throw new TypeError('writeCar: every root must be a CID')
  }
  const { signal } = options
  signal?.throwIfAborted()
  const { writer, out } = CarWriter.create(roots)
  const output = out[Symbol.asyncIterator]()
  let stop = false
  let failure: { error: unknown } | undefined
  // The pump feeds the library's channel; `put` resolves once the consumer has
  // drained what the block produced, which is the backpressure. It never
  // rejects: a failure is kept and thrown to the consumer after the channel ends.
  const pump = (async () => {
    try {
      for await (const block of blocks) {
        if (stop) break
        signal?.throwIfAborted()
        await writer.put(block)
      }
    } catch (err) {
      failure = { error: err }
    } finally {
      try {
        await writer.close()
      } catch (err) {
        failure ??= { error: err }
      }
    }
  })()

  let pending: Uint8Array[] = []
  let pendingBytes = 0
  const flush = (): Uint8Array => {
    const chunk = concat(pending, pendingBytes)
    pending = []
    pendingBytes = 0
    return chunk
  }
  let ended = false
  try {
    while (true) {
      const next = await output.next()
      if (next.done === true) break
      const bytes = next.value
      if (bytes.length >= WRITE_CHUNK_BYTES) {
        if (pendingBytes > 0) yield flush()
        yield bytes
        continue
      }
      pending.push(bytes)
      pendingBytes += bytes.length
      if (pendingBytes >= WRITE_CHUNK_BYTES) yield flush()
    }
    ended = true
    await pump
    if (failure !== undefined) throw failure.error
    if (pendingBytes > 0) yield flush()
  } finally {
    if (!ended) {
      // Stopped early (return, throw or abort): tell the pump, and drain the
      // channel so a pending `put` resolves and the pump can end the source.
      stop = true
      while ((await output.next()).done !== true) { /* discard */ }
      await pump
    }
  }
}

async function readRoots (reader: CarBytes, allowNoRoots: boolean): Promise<CID[]> {
  const length = await reader.peekVarint('header length')
  if (length === undefined) throw new CarParseError('empty input (no header)', { offset: 0, truncated: true })
  if (length.value === 0) throw new CarParseError('header length is zero', { offset: 0 })
  if (length.value > MAX_HEADER_BYTES) {
    throw new CarParseError(`header length ${length.value} exceeds ${MAX_HEADER_BYTES} bytes`, { offset: 0 })
  }
  reader.limit(length.size + length.value, 'header')
  let header: { version: number, roots?: unknown }
  try {
    // strictVersion 1: a CARv2 pragma is refused here instead of being followed.
    header = await readHeader(reader.asBytesReader, 1)
  } catch (err) {
    // the source's own failure (a network error, an abort) is not a parse error
    if (err instanceof CarParseError || reader.isSourceError(err)) throw err
    throw new CarParseError(`invalid header (${(err as Error).message})`, { offset: 0 }, { cause: err })
  }
  reader.unlimit()
  if (header.version !== 1) throw new CarParseError(`header version is ${String(header.version)}, want 1`, { offset: 0 })
  if (!Array.isArray(header.roots)) throw new CarParseError('header has no roots list', { offset: 0 })
  if (header.roots.length === 0 && !allowNoRoots) throw new CarParseError('header has no roots', { offset: 0 })
  const roots = header.roots.map(root => {
    const cid = CID.asCID(root)
    if (cid === null) throw new CarParseError('header root is not a CID', { offset: 0 })
    // A raw root passes here: a CAR is any batch of blocks. What a root must be
    // is the reader's business (verify.ts and decodeCommit require a DAG-CBOR
    // commit CID as a repo CAR's first root).
    assertSupportedCid(cid)
    return cid
  })
  return roots
}

async function * readBlocks (reader: CarBytes, maxBlockBytes: number, signal: AbortSignal | undefined): AsyncGenerator<Block, void, undefined> {
  try {
    while (true) {
      signal?.throwIfAborted()
      const start = reader.pos
      const peeked = reader.peekVarint('section length')
      const length = peeked instanceof Promise ? await peeked : peeked
      if (length === undefined) return
      if (length.value === 0) throw new CarParseError('section length is zero', { offset: start })
      if (length.value > maxBlockBytes + MAX_CID_BYTES) {
        throw new CarParseError(`section length ${length.value} exceeds the ${maxBlockBytes}-byte block limit`, { offset: start })
      }
      const end = start + length.size + length.value
      reader.limit(end, 'section')
      let head: { cid: CID, blockLength: number }
      try {
        head = await readBlockHead(reader.asBytesReader)
      } catch (err) {
        if (err instanceof CarParseError || reader.isSourceError(err)) throw err
        throw new CarParseError(`invalid section CID (${(err as Error).message})`, { offset: start }, { cause: err })
      }
      const cidLength = reader.pos - start - length.size
      if (head.cid.bytes.length !== cidLength) throw new CarParseError(`CID ${head.cid} is not canonically encoded`, { offset: start })
      if (head.blockLength > maxBlockBytes) {
        throw new CarParseError(`block ${head.cid} is ${head.blockLength} bytes, over the ${maxBlockBytes}-byte limit`, { offset: start })
      }
      const read = reader.exactly(head.blockLength, true)
      const bytes = read instanceof Promise ? await read : read
      reader.unlimit()
      verifyBlock(head.cid, bytes)
      yield { cid: head.cid, bytes }
    }
  } finally {
    await reader.close()
  }
}

/**
 * The byte source under @ipld/car's decoder: one contiguous buffer over the
 * input chunks, with absolute positions for error offsets, and a limit (the
 * end of the current header or section) that reads may not cross.
 *
 * `upTo` and `exactly` answer synchronously when the bytes are already
 * buffered (always, for a Uint8Array source): the library `await`s them either
 * way, and skipping a promise per call matters at 8 calls per block.
 */
class CarBytes {
  #buf: Uint8Array
  #off = 0
  #pos = 0
  #ended: boolean
  #iterator: AsyncIterator<Uint8Array> | undefined
  #end = Infinity
  #endWhat = ''
  #endStart = 0
  readonly #signal: AbortSignal | undefined
  #sourceError: unknown

  constructor (source: Uint8Array | AsyncIterable<Uint8Array>, signal: AbortSignal | undefined) {
    this.#signal = signal
    if (source instanceof Uint8Array) {
      this.#buf = plain(source)
      this.#ended = true
    } else {
      this.#buf = new Uint8Array(0)
      this.#ended = false
      this.#iterator = source[Symbol.asyncIterator]()
    }
  }

  /** This reader as the library's `BytesReader` (whose methods it may answer without a promise). */
  get asBytesReader (): BytesReader {
    return this as unknown as BytesReader
  }

  /** Whether `err` is what the source threw (passed on as it is, never as a parse error). */
  isSourceError (err: unknown): boolean {
    return err !== undefined && err === this.#sourceError
  }

  get pos (): number {
    return this.#pos
  }

  /** Reads may not go past `end` (absolute) until {@link unlimit}; `what` names the structure in errors. */
  limit (end: number, what: string): void {
    this.#end = end
    this.#endWhat = what
    this.#endStart = this.#pos
  }

  unlimit (): void {
    this.#end = Infinity
  }

  upTo (length: number): Uint8Array | Promise<Uint8Array> {
    const want = Math.min(length, this.#end - this.#pos)
    if (this.#buf.length - this.#off < want && !this.#ended) return this.#fill(want).then(() => this.#upTo(want))
    return this.#upTo(want)
  }

  exactly (length: number, seek = false): Uint8Array | Promise<Uint8Array> {
    if (!Number.isSafeInteger(length) || length < 0) {
      throw new CarParseError(`${this.#endWhat || 'data'} asks for ${length} bytes`, { offset: this.#endStart })
    }
    if (this.#pos + length > this.#end) {
      throw new CarParseError(`${this.#endWhat} is shorter than its contents (length ends at ${this.#end}, contents need ${this.#pos + length})`, { offset: this.#endStart })
    }
    if (this.#buf.length - this.#off < length && !this.#ended) return this.#fill(length).then(() => this.#exactly(length, seek))
    return this.#exactly(length, seek)
  }

  seek (length: number): void {
    this.#off += length
    this.#pos += length
  }

  /**
   * Reads a varint without consuming it (the library reads it again). Returns
   * `undefined` at a clean end of input. Throws for an unterminated,
   * over-long or non-minimal varint.
   */
  peekVarint (what: string): VarintPeek | Promise<VarintPeek> {
    if (this.#buf.length - this.#off < MAX_VARINT_BYTES && !this.#ended) {
      return this.#fill(MAX_VARINT_BYTES).then(() => this.#peekVarint(what))
    }
    return this.#peekVarint(what)
  }

  async close (): Promise<void> {
    const iterator = this.#iterator
    this.#iterator = undefined
    this.#ended = true
    if (iterator?.return !== undefined) await iterator.return()
  }

  #upTo (want: number): Uint8Array {
    return this.#buf.subarray(this.#off, this.#off + Math.min(want, this.#buf.length - this.#off))
  }

  #exactly (length: number, seek: boolean): Uint8Array {
    const available = this.#buf.length - this.#off
    if (available < length) {
      throw new CarParseError(`truncated ${this.#endWhat || 'data'}: need ${length} bytes at offset ${this.#pos}, input ends after ${available}`, { offset: this.#endStart, truncated: true })
    }
    const out = this.#buf.subarray(this.#off, this.#off + length)
    if (seek) this.seek(length)
    return out
  }

  #peekVarint (what: string): VarintPeek {
    const window = this.#buf.subarray(this.#off, Math.min(this.#buf.length, this.#off + MAX_VARINT_BYTES, this.#off + this.#end - this.#pos))
    if (window.length === 0) return undefined
    try {
      // multiformats refuses non-minimal varints, and ones that run off the window
      const [value, size] = varint.decode(window)
      return { value, size }
    } catch (err) {
      const message = (err as Error).message
      if (message.includes('not minimally encoded')) throw new CarParseError(`${what} varint is not minimally encoded`, { offset: this.#pos }, { cause: err })
      // (the window is shorter than the maximum only where the input or the limit ends)
      if (window.length < MAX_VARINT_BYTES) throw new CarParseError(`${what} varint is truncated`, { offset: this.#pos, truncated: this.#ended && this.#pos + window.length < this.#end }, { cause: err })
      throw new CarParseError(`${what} varint is longer than ${MAX_VARINT_BYTES} bytes`, { offset: this.#pos }, { cause: err })
    }
  }

  /** Buffers until `length` bytes are available from the current offset or the input ends. */
  async #fill (length: number): Promise<void> {
    const parts: Uint8Array[] = []
    let have = this.#buf.length - this.#off
    if (have > 0) parts.push(this.#buf.subarray(this.#off))
    while (have < length && this.#iterator !== undefined) {
      this.#signal?.throwIfAborted()
      let next: IteratorResult<Uint8Array>
      try {
        next = await this.#iterator.next()
      } catch (err) {
        this.#sourceError = err
        throw err
      }
      if (next.done === true) {
        this.#ended = true
        this.#iterator = undefined
        break
      }
      const chunk = next.value
      if (!(chunk instanceof Uint8Array)) throw new TypeError('CAR source must yield Uint8Array chunks')
      if (chunk.length === 0) continue
      parts.push(plain(chunk))
      have += chunk.length
    }
    this.#buf = parts.length === 1 ? parts[0] : concat(parts, have)
    this.#off = 0
  }
}

type VarintPeek = { value: number, size: number } | undefined

/** A plain Uint8Array view: a Buffer's `subarray` is several times slower, and it runs twice per block. */
function plain (bytes: Uint8Array): Uint8Array {
  return bytes.constructor === Uint8Array ? bytes : new Uint8Array(bytes.buffer, bytes.byteOffset, bytes.byteLength)
}

function concat (parts: Uint8Array[], total: number): Uint8Array {
  if (parts.length === 1) return parts[0]
  const out = new Uint8Array(total)
  let offset = 0
  for (const part of parts) {
    out.set(part, offset)
    offset += part.length
  }
  return out
}
