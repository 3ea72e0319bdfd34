/**
 * Long listings (car ls, records) on stdout without holding them in memory.
 */
import { once } from 'node:events'

/**
 * Batches lines into larger writes and waits for 'drain' so output never piles up
 * in memory. A reader that goes away (`| head`) ends the listing quietly.
 */
export class LineWriter {
  readonly #stream: NodeJS.WritableStream
  #buffer = ''
  #error: NodeJS.ErrnoException | undefined
  readonly #onError = (err: NodeJS.ErrnoException): void => { this.#error ??= err }

  constructor (stream: NodeJS.WritableStream) {
    this.#stream = stream
    stream.on('error', this.#onError)
  }

  /** False once the reader is gone: stop producing lines. */
  get open (): boolean {
    return this.#error === undefined
  }

  async write (line: string): Promise<void> {
    this.#buffer += line + '\n'
    if (this.#buffer.length >= 64 * 1024) await this.flush()
  }

  async flush (): Promise<void> {
    if (this.#buffer === '' || this.#error !== undefined) return
    const ok = this.#stream.write(this.#buffer)
    this.#buffer = ''
    if (!ok) {
      try {
        await once(this.#stream, 'drain')
      } catch (err) {
        this.#onError(err as NodeJS.ErrnoException)
      }
    }
  }

  async end (): Promise<void> {
    await this.flush()
    this.#stream.off('error', this.#onError)
    if (this.#error !== undefined && this.#error.code !== 'EPIPE') throw this.#error
  }
}
