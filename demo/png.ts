/**
 * The demo's pictures (`--png DIR`): the scene, the draft map and kept blocks per head, and
 * per-frame error maps, as PNG files written with node:zlib.
 *
 * @module
 */
import { deflateSync } from "node:zlib";
import { type DenseStats, draftMap } from "../src/metrics.ts";
import { LATENT_CHANNELS, type Workload } from "../src/workload.ts";
import type { Budget, Estimator, Policy, TensorArray } from "../src/types.ts";

/** One draft op's measurements. */
export interface Draft {
  sparsity: number;
  policy: Policy;
  estimator: Estimator;
  samples: number | null;
  budget: Budget;
  /** For file names: the sparsity, plus the variant unless it is the reference. */
  label: string;
  out: TensorArray;
  ms: number;
  attentionMs: number;
  mask: Uint8Array;
}

// ---------------------------------------------------------------------------------------------
// PNG output
// ---------------------------------------------------------------------------------------------

const CRC_TABLE = (() => {
  const t = new Uint32Array(256);
  for (let n = 0; n < 256; n++) {
    let c = n;
    for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
    t[n] = c >>> 0;
  }
  return t;
})();

function crc32(bytes: Uint8Array): number {
  let c = 0xffffffff;
  for (const b of bytes) c = CRC_TABLE[(c ^ b) & 0xff] ^ (c >>> 8);
  return (c ^ 0xffffffff) >>> 0;
}

/** An 8-bit RGB image. */
interface Image {
  width: number;
  height: number;
  rgb: Uint8Array;
}

function newImage(width: number, height: number, gray = 32): Image {
  return { width, height, rgb: new Uint8Array(width * height * 3).fill(gray) };
}

/** Encodes an RGB image as PNG (zlib from node:zlib, no filter). */
function encodePng(img: Image): Uint8Array {
  const raw = new Uint8Array((img.width * 3 + 1) * img.height);
  for (let y = 0; y < img.height; y++) {
    raw.set(
      img.rgb.subarray(y * img.width * 3, (y + 1) * img.width * 3),
      y * (img.width * 3 + 1) + 1,
    );
  }
  const chunk = (type: string, data: Uint8Array): Uint8Array => {
    const out = new Uint8Array(12 + data.length);
    const view = new DataView(out.buffer);
    view.setUint32(0, data.length);
    for (let i = 0; i < 4; i++) out[4 + i] = type.charCodeAt(i);
    out.set(data, 8);
    view.setUint32(8 + data.length, crc32(out.subarray(4, 8 + data.length)));
    return out;
  };
  const ihdr = new Uint8Array(13);
  const hv = new DataView(ihdr.buffer);
  hv.setUint32(0, img.width);
  hv.setUint32(4, img.height);
  ihdr.set([8, 2, 0, 0, 0], 8); // 8-bit, RGB, deflate, no filter, no interlace
  const parts = [
    new Uint8Array([137, 80, 78, 71, 13, 10, 26, 10]),
    chunk("IHDR", ihdr),
    chunk("IDAT", new Uint8Array(deflateSync(raw))),
    chunk("IEND", new Uint8Array(0)),
  ];
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let o = 0;
  for (const p of parts) {
    out.set(p, o);
    o += p.length;
  }
  return out;
}

/** A dark-to-bright heat colour map (black, purple, orange, yellow) for x in [0, 1]. */
function heat(x: number): [number, number, number] {
  const stops: [number, number, number][] = [
    [0, 0, 4],
    [87, 16, 110],
    [188, 55, 84],
    [249, 142, 9],
    [252, 255, 164],
  ];
  const t = Math.min(1, Math.max(0, Number.isFinite(x) ? x : 0)) * (stops.length - 1);
  const i = Math.min(stops.length - 2, Math.floor(t));
  const f = t - i;
  return [0, 1, 2].map((c) => Math.round(stops[i][c] + (stops[i + 1][c] - stops[i][c]) * f)) as [
    number,
    number,
    number,
  ];
}

/** Fills a `cell x cell` square at grid position (x, y) of a panel whose corner is (ox, oy). */
function fillCell(
  img: Image,
  ox: number,
  oy: number,
  x: number,
  y: number,
  cell: number,
  rgb: readonly number[],
): void {
  for (let dy = 0; dy < cell; dy++) {
    for (let dx = 0; dx < cell; dx++) {
      const p = ((oy + y * cell + dy) * img.width + ox + x * cell + dx) * 3;
      img.rgb[p] = rgb[0];
      img.rgb[p + 1] = rgb[1];
      img.rgb[p + 2] = rgb[2];
    }
  }
}

/** log10 heat of a map relative to its maximum, over `decades` decades. */
function logHeat(x: number, max: number, decades = 4): [number, number, number] {
  if (!(x > 0) || !(max > 0)) return heat(0);
  return heat(1 + Math.log10(x / max) / decades);
}

export async function writePngs(
  dir: string,
  w: Workload,
  shape: Workload & { pool: [number, number] },
  stats: DenseStats,
  dense: TensorArray,
  drafts: { label: string; out: TensorArray; mask: Uint8Array }[],
): Promise<void> {
  await Deno.mkdir(dir, { recursive: true });
  const gap = 2;
  // Scene: batch 0, frames side by side, a fixed projection of the latent channels to RGB.
  {
    const ph = w.height * 2, pw = w.width * 2;
    const up = Math.max(1, Math.min(4, Math.floor(1600 / (w.frames * pw))));
    const img = newImage(w.frames * (pw * up + gap) - gap, ph * up);
    const proj = [0, 1, 2].map((c) =>
      Array.from({ length: LATENT_CHANNELS }, (_, i) => Math.sin(1.7 * i + 2.1 * c + 0.3))
    );
    const vals = new Float64Array(w.frames * ph * pw * 3);
    let lo = Infinity, hi = -Infinity;
    for (let p = 0; p < w.frames * ph * pw; p++) {
      for (let c = 0; c < 3; c++) {
        let s = 0;
        for (let i = 0; i < LATENT_CHANNELS; i++) {
          s += proj[c][i] * w.scene[p * LATENT_CHANNELS + i];
        }
        vals[p * 3 + c] = s;
        lo = Math.min(lo, s);
        hi = Math.max(hi, s);
      }
    }
    for (let f = 0; f < w.frames; f++) {
      for (let y = 0; y < ph; y++) {
        for (let x = 0; x < pw; x++) {
          const p = (f * ph + y) * pw + x;
          const rgb = [0, 1, 2].map((c) => Math.round(255 * (vals[p * 3 + c] - lo) / (hi - lo)));
          fillCell(img, f * (pw * up + gap), 0, x, y, up, rgb);
        }
      }
    }
    await Deno.writeFile(`${dir}/scene.png`, encodePng(img));
  }
  // Per head (batch 0, up to 4 heads): draft map P | true block mass | kept blocks per sparsity.
  const g = stats.g;
  const p = draftMap(w.q, w.k, shape);
  const cell = Math.max(1, Math.min(8, Math.floor(512 / g)));
  const side = g * cell;
  for (let h = 0; h < Math.min(4, w.heads); h++) {
    const panels = 2 + drafts.length;
    const img = newImage(panels * (side + gap) - gap, side);
    const base = h * g * g;
    let pMax = 0, mMax = 0;
    for (let x = 0; x < g * g; x++) {
      pMax = Math.max(pMax, p[base + x]);
      mMax = Math.max(mMax, stats.blockMass[base + x]);
    }
    for (let i = 0; i < g; i++) {
      for (let j = 0; j < g; j++) {
        fillCell(img, 0, 0, j, i, cell, logHeat(p[base + i * g + j], pMax));
        fillCell(img, side + gap, 0, j, i, cell, logHeat(stats.blockMass[base + i * g + j], mMax));
        drafts.forEach((d, n) => {
          const kept = d.mask[base + i * g + j] === 1;
          fillCell(
            img,
            (2 + n) * (side + gap),
            0,
            j,
            i,
            cell,
            kept ? [235, 235, 235] : [20, 20, 20],
          );
        });
      }
    }
    await Deno.writeFile(`${dir}/draft_head${h}.png`, encodePng(img));
  }
  // Per sparsity: |draft - dense| per token (L2 over heads and head dims), batch 0, frames side
  // by side, one colour scale for all sparsities so the pictures compare.
  const sT = w.layout === "BSHD" ? w.heads * w.headDim : w.headDim;
  const sH = w.layout === "BSHD" ? w.headDim : w.tokens * w.headDim;
  const videoOffset = w.textPosition === "before" ? w.textTokens : 0;
  const errs = drafts.map((d) => {
    const e = new Float64Array(w.frames * w.height * w.width);
    for (let t = 0; t < e.length; t++) {
      let s = 0;
      for (let h = 0; h < w.heads; h++) {
        const o = (videoOffset + t) * sT + h * sH;
        for (let x = 0; x < w.headDim; x++) s += (d.out[o + x] - dense[o + x]) ** 2;
      }
      e[t] = Math.sqrt(s);
    }
    return e;
  });
  let eMax = 0;
  for (const e of errs) for (const x of e) eMax = Math.max(eMax, x);
  const ecell = Math.max(1, Math.min(6, Math.floor(1600 / (w.frames * w.width))));
  for (const [n, d] of drafts.entries()) {
    const img = newImage(w.frames * (w.width * ecell + gap) - gap, w.height * ecell);
    for (let f = 0; f < w.frames; f++) {
      for (let y = 0; y < w.height; y++) {
        for (let x = 0; x < w.width; x++) {
          const v = errs[n][(f * w.height + y) * w.width + x];
          fillCell(img, f * (w.width * ecell + gap), 0, x, y, ecell, heat(eMax > 0 ? v / eMax : 0));
        }
      }
    }
    await Deno.writeFile(`${dir}/error_sparsity${d.label}.png`, encodePng(img));
  }
}
