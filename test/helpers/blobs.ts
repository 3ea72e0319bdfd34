/**
 * Blobs on a real PDS for the e2e tests: uploaded with @atproto/api's `uploadBlob`
 * and referenced from posts as Bluesky writes them (`app.bsky.embed.images`).
 */
import type { AtpAgent } from '@atproto/api'

export interface Uploaded {
  cid: string
  bytes: Uint8Array
  /** The record's blob field, as JSON. */
  ref: { $type: 'blob', ref: { $link: string }, mimeType: string, size: number }
}

export async function upload (agent: AtpAgent, bytes: Uint8Array, mimeType = 'image/png'): Promise<Uploaded> {
  const { data } = await agent.uploadBlob(bytes, { encoding: mimeType })
  const cid = data.blob.ref.toString()
  return { cid, bytes, ref: { $type: 'blob', ref: { $link: cid }, mimeType: data.blob.mimeType, size: data.blob.size } }
}

/** A post with images, as Bluesky writes one. */
export const imagePost = (text: string, images: readonly Uploaded[]): Record<string, unknown> => ({
  text,
  createdAt: new Date().toISOString(),
  embed: { $type: 'app.bsky.embed.images', images: images.map(image => ({ alt: text, image: image.ref })) }
})
