import { useEffect, useState } from "preact/hooks";
import type { MediaRef } from "@im/sdk";
import type { Store } from "./store.js";

/** An image message: its thumbnail (made moments after upload), else the image itself. */
export function MediaImage({ store, media }: { store: Store; media: MediaRef }) {
  const [url, setUrl] = useState<string | null>(null);
  const [full, setFull] = useState<string | null>(null);
  useEffect(() => {
    let alive = true;
    let made: string | null = null;
    store.client.http
      .media(media.mediaId, true)
      .catch(() => store.client.http.media(media.mediaId, false))
      .then((blob) => {
        made = URL.createObjectURL(blob);
        if (alive) setUrl(made);
      })
      .catch(() => {});
    return () => {
      alive = false;
      if (made) URL.revokeObjectURL(made);
    };
  }, [media.mediaId]);
  async function openFull() {
    const blob = await store.client.http.media(media.mediaId, false);
    setFull(URL.createObjectURL(blob));
  }
  if (!media.mime.startsWith("image/")) return <span class="muted">[{media.mime}]</span>;
  return (
    <>
      {url ? (
        <img class="media" src={url} width={media.width || undefined} alt="image" onClick={openFull} data-testid="image" />
      ) : (
        <span class="media placeholder">image…</span>
      )}
      {full && (
        <div class="lightbox" onClick={() => setFull(null)}>
          <img src={full} alt="image" />
        </div>
      )}
    </>
  );
}
