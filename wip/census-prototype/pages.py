import struct,sys
pid=int(sys.argv[1])
mem=open(f'/proc/{pid}/mem','rb',buffering=0)
def rd(a,n):
    mem.seek(a); return mem.read(n)
def u64(a): return struct.unpack('<Q',rd(a,8))[0]
for l in open(f'/proc/{pid}/maps'):
    p=l.split()
    if p[1]!='rw-p' or len(p)!=5: continue
    s,e=(int(x,16) for x in p[0].split('-'))
    a=(s+0x3ffff)&~0x3ffff
    while a+0x60<=e:
        h=struct.unpack('<12Q',rd(a,96))
        size,flags,heap,ast,aend=h[:5]
        if a<ast<aend<=a+size and size%4096==0:
            owner=h[8]
            try: sid=rd(owner+0x10,1)[0] if owner else -1
            except Exception: sid='?'
            print(hex(a),hex(size),hex(flags),hex(heap),hex(ast-a),hex(aend-a),'owner',hex(owner),'id',sid, [hex(x) for x in h[5:8]])
        a+=0x40000
