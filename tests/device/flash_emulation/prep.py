# Writes flash_emu.inc (to the path given): flash_attention.cu with mma.cuh and common.cuh inlined and its inline-PTX helpers
# (mma, ldmatrix, cp.async, cvt.bf16) replaced by emu_ops.h's C++ versions.
import os,sys
here=os.path.dirname(os.path.abspath(__file__))
kdir=os.path.join(here,'..','..','..','src','FineTune.Engine','Cuda','Kernels')+os.sep
src=open(kdir+'flash_attention.cu').read()
# The mma/ldmatrix/cp.async helpers live in mma.cuh (shared with experts.cu): inline it, then replace them below.
mma=open(kdir+'mma.cuh').read().replace('#pragma once','').replace('typedef unsigned short bf16_t;','')
src=src.replace('#include "mma.cuh"',mma)
common=open(kdir+'common.cuh').read()
def drop_func(s,name):
    # remove a function definition starting at the line containing name( through matching brace
    i=s.index(name)
    start=s.rfind('\n',0,i)+1
    # include a preceding 'template <int N>' line
    prev=s.rfind('\n',0,start-1)+1
    if s[prev:start].startswith('template'): start=prev
    j=s.index('{',i); depth=0; k=j
    while True:
        if s[k]=='{': depth+=1
        elif s[k]=='}':
            depth-=1
            if depth==0: break
        k+=1
    return s[:start]+s[k+1:]
common=drop_func(common,'unsigned short f32_to_bf16(float f)')
common=common.replace('#pragma once','')
for n in ['void mma16816(','unsigned smem_addr(','void ldsm_x4_at(','void ldsm_x4_trans_at(','void ldsm_x4(','void ldsm_x4_trans(','void cp_async16_at(','void cp_async16(','void cp_async4(','void cp_async_commit()','void cp_async_wait()','float exp2_ftz(','unsigned pack_bf16(']:
    src=drop_func(src,n)
src=src.replace('#include "common.cuh"','__device__ __forceinline__ unsigned short f32_to_bf16(float f) { return f32_to_bf16_emu(f); }\n'+common+'\ntypedef unsigned short bf16_t;\n#include "emu_ops.h"\n')
open(sys.argv[1],'w').write(src)  # the output path (run.sh: its build folder)
