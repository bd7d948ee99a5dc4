#!/usr/bin/env python3
"""Copy kernels/cuda into OUTDIR for the host emulator (cuda_emu.h), rewriting only what a host compiler cannot
take: __shared__ declarations become per-block emulator buffers (poisoned, each before a guard page), and the
bodies of the few functions written in inline PTX call the emulator's versions (emu_mma_16816, emu_ldsm4,
emu_cp_async, emu_prmt).  Everything else compiles as written.  With --bug N, one deliberate bug (BUGS below), for
showing that the tests catch it.  Usage: prep.py OUTDIR [--bug N] | prep.py --list gemv|decode"""
import os, re, sys
SRC = os.path.join(os.path.dirname(os.path.abspath(__file__)), '..', '..', '..', 'kernels', 'cuda')
FILES = ['cuda.h', 'model.cu', 'internal.cuh', 'common.cuh', 'attn.cuh', 'select.cuh', 'kernels.cu', 'select.cu', 'attn.cu']
TYPES = r'(?:unsigned char|unsigned|int|float|double|TopkShared)'

def shared(text, fname):
    out = []
    for i, line in enumerate(text.split('\n'), 1):
        if '__shared__' not in line or line.lstrip().startswith('//'):
            out.append(line)
            continue
        m = re.match(r'^(\s*)(extern\s+)?__shared__\s+(?:__align__\(\d+\)\s+)?(' + TYPES + r')\s+([^;]+);(.*)$', line)
        if not m:
            raise SystemExit('%s:%d: a __shared__ declaration prep.py does not know: %s' % (fname, i, line.strip()))
        ind, ext, ty, decls, rest = m.groups()
        parts = []
        for d in decls.split(','):
            dm = re.match(r'^(\w+)((?:\[[^\]]*\])*)$', d.strip())
            if not dm: raise SystemExit('%s:%d: declarator %r' % (fname, i, d))
            name, dims = dm.groups()
            key = '"%s:%d:%s"' % (fname, i, name)
            if ext:
                assert dims == '[]', line
                parts.append('%s *%s = reinterpret_cast<%s *>(emu_dyn_smem());' % (ty, name, ty))
            elif dims:
                parts.append('auto &%s = *reinterpret_cast<%s(*)%s>(emu_static_smem(%s, sizeof(%s%s)));'
                             % (name, ty, dims, key, ty, dims))
            else:
                parts.append('%s &%s = *reinterpret_cast<%s *>(emu_static_smem(%s, sizeof(%s)));'
                             % (ty, name, ty, key, ty))
        out.append(ind + ' '.join(parts) + rest)
    return '\n'.join(out)

def body(text, sig, new):
    """Replace the body of the one function whose definition starts with sig."""
    assert text.count(sig) == 1, (sig, text.count(sig))
    i = text.index(sig); k = text.index('{', i); d = 0
    for j in range(k, len(text)):
        d += text[j] == '{'; d -= text[j] == '}'
        if d == 0: return text[:k] + '{ ' + new + ' }' + text[j + 1:]
    raise SystemExit('unbalanced ' + sig)

def sub1(text, old, new):
    assert text.count(old) == 1, (old, text.count(old))
    return text.replace(old, new)

# Deliberate bugs: number: (the test that must catch it, file, text, replacement, what).
BUGS = {
    1: ('decode', 'kernels.cu', 'const uint32_t a[4] = {a0[2 * kk], a1[2 * kk], a0[2 * kk + 1], a1[2 * kk + 1]};',
        'const uint32_t a[4] = {a0[2 * kk], a0[2 * kk + 1], a1[2 * kk], a1[2 * kk + 1]};',
        "the tensor-core GEMV's A fragment in the wrong register order"),
    2: ('decode', 'kernels.cu', 'g.qa = L.qqkv;\n        gemv_phase<NT, QW>(g, smem);\n        grid.sync();\n',
        'g.qa = L.qqkv;\n        gemv_phase<NT, QW>(g, smem);\n',
        "the persistent kernel without its grid-wide barrier after the QKV phase"),
    3: ('decode', 'attn.cuh', '        if (lane == 0) ml[0][gi] = m, ml[1][gi] = l;\n    }\n    __syncthreads();\n',
        '        if (lane == 0) ml[0][gi] = m, ml[1][gi] = l;\n    }\n',
        "attn_chunk reading other warps' softmax weights without a barrier"),
    4: ('decode', 'select.cuh', 'const uint32_t a[4] = {fp8x2_lo_to_f16x2(ka[i][w]), fp8x2_lo_to_f16x2(kb[i][w]),',
        'const uint32_t a[4] = {fp8x2_lo_to_f16x2(ka[i][w]), fp8x2_hi_to_f16x2(kb[i][w]),',
        "the tensor-core index scores with a key's bytes mixed up"),
    5: ('decode', 'select.cuh', 'drop = (int)(unsigned)tot - need;', 'drop = (int)(unsigned)tot - need + 1;',
        "the register top-k dropping one key too many of the threshold class"),
    6: ('decode', 'kernels.cu', 'topk_row<0, 256>(sc, len, sq.topk, out, cnt + r, topk_sm);\n            }\n            grid.sync();\n',
        'topk_row<0, 256>(sc, len, sq.topk, out, cnt + r, topk_sm);\n            }\n',
        "the persistent kernel attending before every block's top-k is done"),
    7: ('decode', 'attn.cu', 'fa_wait<1>(); // this chunk\'s K (its V may still be in flight)',
        'fa_wait<2>(); // this chunk\'s K (its V may still be in flight)',
        "the tiled attention reading K before its copy is waited for"),
    8: ('decode', 'attn.cu', 'fa_ldsm4t(b, Vs', 'fa_ldsm4(b, Vs', "the tiled attention loading V untransposed"),
    9: ('decode', 'kernels.cu', '        buf[l] = x0, buf[l + 32] = x1;\n        __syncwarp();\n',
        '        buf[l] = x0, buf[l + 32] = x1;\n', "the indexer's RoPE reading other lanes' values without __syncwarp"),
    10: ('gemv', 'kernels.cu', 'int sw = blk & 7;', 'int sw = blk & 3;', "the quantised GEMV reading with a wrong swizzle"),
    11: ('gemv', 'kernels.cu', 'for (int blk = lane + 32 * QP; blk < nb; blk += 32)',
         'for (int blk = lane + 32 * (QP - 1); blk < nb; blk += 32)',
         "the quantised GEMV's loop past the preloaded blocks starting one block early"),
    12: ('gemv', 'kernels.cu', '        __syncthreads(); // red is reused by the next row\n', '',
         "stage_x without its barrier after the staged rows"),
    13: ('gemv', 'kernels.cu', '            if (lane == 0) red[warp] = ss;\n            __syncthreads();\n',
         '            if (lane == 0) red[warp] = ss;\n', "stage_x reading the warps' sums before a barrier"),
}
bug = int(sys.argv[3]) if len(sys.argv) > 3 and sys.argv[2] == '--bug' else 0
if len(sys.argv) == 3 and sys.argv[1] == '--list': # --list TEST: the bugs that TEST must catch
    for k, v in BUGS.items():
        if v[0] == sys.argv[2]: print(k, v[4])
    sys.exit(0)
os.makedirs(sys.argv[1], exist_ok=True)
for f in FILES:
    t = open(os.path.join(SRC, f)).read()
    if f == 'common.cuh':
        t = body(t, '__device__ __forceinline__ void mma_16816(float *c, const uint32_t *a, uint32_t b0, uint32_t b1)',
                 'emu_mma_16816(c, a, b0, b1);')
    if f == 'select.cuh':
        t = body(t, '__device__ __forceinline__ uint32_t prmt_x0(uint32_t x, uint32_t sel)', 'return emu_prmt(x, 0, sel);')
    if f == 'attn.cu':
        t = body(t, '__device__ __forceinline__ void fa_ldsm4(uint32_t r[4], const void *p)', 'emu_ldsm4(r, p, false);')
        t = body(t, '__device__ __forceinline__ void fa_ldsm4t(uint32_t r[4], const void *p)', 'emu_ldsm4(r, p, true);')
        t = body(t, '__device__ __forceinline__ void fa_cp16(void *dst, const void *src, bool ok)',
                 'emu_cp_async(dst, src, ok);')
        t = body(t, '__device__ __forceinline__ void fa_commit()', 'emu_cp_commit();')
        t = body(t, 'template <int N> __device__ __forceinline__ void fa_wait()', 'emu_cp_wait(N);')
    if f == 'kernels.cu':
        t = sub1(t, 'asm volatile("prefetch.global.L2 [%0];" ::"l"(c + off));', '(void)(c + off); // L2 prefetch')
    if bug and BUGS[bug][1] == f:
        t = sub1(t, BUGS[bug][2], BUGS[bug][3])
    t = shared(t, f)
    open(os.path.join(sys.argv[1], f), 'w').write('// GENERATED by tests/gpu/emu/prep.py from kernels/cuda/%s\n' % f + t)
